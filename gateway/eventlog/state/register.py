"""The Défi Santé register in the shared state: each client's current Flag, CarePlan, CareTeam and
Consent, as the alert rules of every instance read them.

Written where the program resources are written (``$defi-sante-enroll``/``-disenroll``, and any
FHIR API write of those types, through a store listener), so an enrollment made through one
instance is seen by the rules of every instance as soon as the operation returns — not when the
``fhir.Flag`` record reaches the other instances' stores.

Newer content only: every content ever registered for a resource is remembered (its hash); a
write of a content already registered is a copy (the store sink applying a ``fhir.*`` record this
or another instance registered when it was made) and changes nothing, so an older copy arriving
later never overwrites newer content. New content gets a stamp greater than the resource's last
one. An operation registers its own result with ``force`` (a re-enrollment identical to an earlier
one is still the newest content).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.eventlog.state.db import StateDb, Tx, open_state

FILE_NAME = "defisante.sqlite"
SCHEMA = "register"
_LOCK = "defisante-register"
_DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource written: its type and id, its content (None: deleted)."""

    rtype: str
    id: str
    body: dict[str, Any] | None


def content_hash(body: dict[str, Any] | None) -> str:
    """The content's identity, ignoring the store's meta.versionId/lastUpdated."""
    if body is None:
        return _DELETED
    meta = {k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    bare = {k: v for k, v in body.items() if k != "meta"}
    if meta:
        bare["meta"] = meta
    text = json.dumps(bare, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ProgramRegister:
    """``get`` / ``write`` over one :class:`StateDb` (module docstring)."""

    def __init__(self, db: StateDb) -> None:
        self.db = db

    def get(self, rtype: str, rid: str) -> tuple[bool, dict[str, Any] | None]:
        """(known, body): known False when never registered; body None when deleted."""
        rows = self.db.run("SELECT body FROM program_register WHERE rtype = ? AND id = ?", (rtype, rid))
        if not rows:
            return False, None
        body: dict[str, Any] | None = json.loads(rows[0][0]) if rows[0][0] is not None else None
        return True, body

    def write(self, entries: Sequence[Entry], *, force: bool = False) -> int:
        """Register new contents in one transaction; how many changed the register."""
        if not entries:
            return 0
        with self.db.transaction(lock=_LOCK) as tx:
            return sum(1 for entry in entries if self._one(tx, entry, force))

    def _one(self, tx: Tx, entry: Entry, force: bool) -> bool:
        digest = content_hash(entry.body)
        fresh = tx.execute("INSERT INTO program_register_seen(rtype, id, content_hash) VALUES (?,?,?) "
                           "ON CONFLICT (rtype, id, content_hash) DO NOTHING RETURNING 1",
                           (entry.rtype, entry.id, digest))
        current = tx.execute("SELECT content_hash, stamp FROM program_register WHERE rtype = ? AND id = ?",
                             (entry.rtype, entry.id))
        if current and str(current[0][0]) == digest:
            return False  # already the current content
        if not fresh and not force and digest != _DELETED:
            return False  # a copy of content registered before: never overwrite newer content with it
        if entry.body is None and not current:
            return False
        stamp = max(int(current[0][1]) + 1 if current else 0, int(time.time() * 1000))
        body = json.dumps(entry.body, ensure_ascii=False, separators=(",", ":")) if entry.body is not None else None
        tx.execute("INSERT INTO program_register(rtype, id, body, content_hash, stamp) VALUES (?,?,?,?,?) "
                   "ON CONFLICT (rtype, id) DO UPDATE SET body = excluded.body, "
                   "content_hash = excluded.content_hash, stamp = excluded.stamp",
                   (entry.rtype, entry.id, body, digest, stamp))
        return True

    def stamp(self, rtype: str, rid: str) -> int | None:
        """The resource's stamp (grows with every new content), None when never registered."""
        rows = self.db.run("SELECT stamp FROM program_register WHERE rtype = ? AND id = ?", (rtype, rid))
        return int(rows[0][0]) if rows else None

    def close(self) -> None:
        self.db.close()


def open_register(state_url: str, data_dir: Path | None) -> ProgramRegister:
    """The register of these settings: ``data_dir/defisante.sqlite``, or PostgreSQL (``state_url``)."""
    return ProgramRegister(open_state(state_url, data_dir, FILE_NAME, SCHEMA))

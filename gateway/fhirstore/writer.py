"""Writes inside one SQLite transaction: versioned put, delete, conditional look-ups, re-indexing.

A :class:`Writer` is only obtained from ``FhirStore.writing()``, which holds the write lock and
an open ``BEGIN IMMEDIATE`` transaction; everything done through it commits or rolls back
together. A put whose content equals the current version (canonical JSON, ignoring
``meta.versionId`` and ``meta.lastUpdated``) writes nothing; otherwise it writes version n+1,
stamps ``meta``, keeps the previous versions and re-indexes the resource. Each write that changed
something is appended to ``Writer.changes``; the store hands that list to its listeners once the
transaction has committed (see ``FhirStore.add_listener``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import StoreError
from gateway.fhir.models import canonical_json
from gateway.fhirstore.dates import instant_text
from gateway.fhirstore.extract import extract
from gateway.fhirstore.params import RESULT_PARAMS, supported
from gateway.fhirstore.query import Params, parse_search
from gateway.fhirstore.search import search

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
Status = Literal["created", "updated", "unchanged", "deleted"]
_VOLATILE_META = ("versionId", "lastUpdated")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a write did: the stored resource (None once deleted), its version and time."""

    rtype: str
    id: str
    version: int
    lu_ms: int
    status: Status
    resource: dict[str, Any] | None

    @property
    def changed(self) -> bool:
        return self.status != "unchanged"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_updated(self) -> str:
        return instant_text(self.lu_ms)


@dataclass(frozen=True, slots=True)
class _Current:
    rk: int
    version: int
    lu_ms: int
    deleted: bool
    digest: bytes


def check_type(rtype: str) -> None:
    if not supported(rtype):
        raise StoreError("resource type not supported by this server", status=405, issue_code="not-supported")


def check_id(rid: Any) -> str:
    if not isinstance(rid, str) or ID_RE.fullmatch(rid) is None:
        raise StoreError("invalid resource id", status=400, issue_code="value")
    return rid


def content_of(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the server-managed ``meta.versionId``/``meta.lastUpdated``."""
    meta = resource.get("meta")
    if not isinstance(meta, dict) or not any(k in meta for k in _VOLATILE_META):
        return resource
    rest = {k: v for k, v in meta.items() if k not in _VOLATILE_META}
    out = {k: v for k, v in resource.items() if k != "meta"}
    if rest:
        out["meta"] = rest
    return out


def _stamp(content: dict[str, Any], version: int, lu_ms: int) -> dict[str, Any]:
    got = content.get("meta")
    meta: dict[str, Any] = got if isinstance(got, dict) else {}
    head = {"resourceType": content["resourceType"], "id": content["id"],
            "meta": {"versionId": str(version), "lastUpdated": instant_text(lu_ms), **meta}}
    return head | {k: v for k, v in content.items() if k not in head}


def digest(content: dict[str, Any]) -> bytes:
    """Change-detection digest: ``meta.source`` (which names the message that carried the resource) is
    left out, so a shared Organization or Location resent by every message gets no new version."""
    meta = content.get("meta")
    if isinstance(meta, dict) and "source" in meta:
        rest = {k: v for k, v in meta.items() if k != "source"}
        content = {k: v for k, v in content.items() if k != "meta"} | ({"meta": rest} if rest else {})
    return hashlib.blake2b(canonical_json(content).encode(), digest_size=16).digest()


class Writer:
    """Write operations on the store's write connection, inside one open transaction."""

    def __init__(self, conn: sqlite3.Connection, now_ms: int) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self.changes: list[Outcome] = []  # what this transaction changed, in order (for store listeners)

    def _current(self, rtype: str, rid: str) -> _Current | None:
        row = self.conn.execute(
            "SELECT rk, version, lu_ms, deleted, hash FROM resources WHERE rtype = ? AND id = ?",
            (rtype, rid)).fetchone()
        return None if row is None else _Current(row[0], row[1], row[2], bool(row[3]), row[4])

    def current_version(self, rtype: str, rid: str) -> int | None:
        """The current version of a live resource, None when absent or deleted."""
        cur = self._current(rtype, rid)
        return None if cur is None or cur.deleted else cur.version

    @staticmethod
    def _check_match(cur: _Current | None, if_match: int | None) -> None:
        if if_match is not None and (cur is None or cur.deleted or cur.version != if_match):
            raise StoreError("version conflict: If-Match does not match the current version", status=412,
                             issue_code="conflict")

    def put(self, resource: dict[str, Any], *, if_match: int | None = None, method: str = "PUT") -> Outcome:
        """Create or update (version-aware, idempotent) one resource that has resourceType and id."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            raise StoreError("resource without resourceType", status=400, issue_code="structure")
        check_type(rtype)
        rid = check_id(resource.get("id"))
        content = content_of(resource)
        new_digest = digest(content)
        cur = self._current(rtype, rid)
        self._check_match(cur, if_match)
        if cur is not None and not cur.deleted and cur.digest == new_digest:
            return Outcome(rtype, rid, cur.version, cur.lu_ms, "unchanged", _stamp(content, cur.version, cur.lu_ms))
        version = 1 if cur is None else cur.version + 1
        lu_ms = self.now_ms if cur is None else max(self.now_ms, cur.lu_ms)
        stored = _stamp(content, version, lu_ms)
        if cur is None:
            rk = self.conn.execute(
                "INSERT INTO resources(rtype, id, version, lu_ms, deleted, hash) VALUES (?,?,?,?,0,?)",
                (rtype, rid, version, lu_ms, new_digest)).lastrowid
            assert rk is not None
        else:
            rk = cur.rk
            self.conn.execute("UPDATE resources SET version = ?, lu_ms = ?, deleted = 0, hash = ? WHERE rk = ?",
                              (version, lu_ms, new_digest, rk))
            self._unindex(rk)
        self.conn.execute("INSERT INTO versions(rk, rtype, version, lu_ms, method, body) VALUES (?,?,?,?,?,?)",
                          (rk, rtype, version, lu_ms, method,
                           json.dumps(stored, ensure_ascii=False, separators=(",", ":"))))
        self.index(rk, stored)
        status: Status = "created" if cur is None or cur.deleted else "updated"
        outcome = Outcome(rtype, rid, version, lu_ms, status, stored)
        self.changes.append(outcome)
        return outcome

    def delete(self, rtype: str, rid: str, *, if_match: int | None = None) -> Outcome:
        """Mark a resource deleted (a new, empty version); deleting it again changes nothing."""
        check_type(rtype)
        cur = self._current(rtype, check_id(rid))
        if cur is None:
            raise StoreError("resource not found", status=404, issue_code="not-found")
        self._check_match(cur, if_match)
        if cur.deleted:
            return Outcome(rtype, rid, cur.version, cur.lu_ms, "unchanged", None)
        version, lu_ms = cur.version + 1, max(self.now_ms, cur.lu_ms)
        self.conn.execute("UPDATE resources SET version = ?, lu_ms = ?, deleted = 1, hash = x'' WHERE rk = ?",
                          (version, lu_ms, cur.rk))
        self.conn.execute("INSERT INTO versions(rk, rtype, version, lu_ms, method, body) VALUES (?,?,?,?,?,NULL)",
                          (cur.rk, rtype, version, lu_ms, "DELETE"))
        self._unindex(cur.rk)
        outcome = Outcome(rtype, rid, version, lu_ms, "deleted", None)
        self.changes.append(outcome)
        return outcome

    def match_ids(self, rtype: str, params: Params, limit: int = 2) -> list[str]:
        """Ids of live resources matching a conditional request (unknown parameters refused)."""
        check_type(rtype)
        if not params or any(name.partition(":")[0] in RESULT_PARAMS for name, _ in params):
            raise StoreError("a conditional request takes search parameters only (at least one)", status=400,
                             issue_code="invalid")
        q = parse_search(rtype, params, strict=True)
        q.count, q.with_total = limit, False
        return [entry.id for entry in search(self.conn, q).entries]

    def index(self, rk: int, resource: dict[str, Any]) -> None:
        rows = extract(resource)
        if rows.tokens:
            self.conn.executemany("INSERT INTO idx_token(rk, param, system, code) VALUES (?,?,?,?)",
                                  [(rk, *row) for row in rows.tokens])
        if rows.refs:
            self.conn.executemany("INSERT INTO idx_ref(rk, param, ttype, tid) VALUES (?,?,?,?)",
                                  [(rk, *row) for row in rows.refs])
        if rows.dates:
            self.conn.executemany("INSERT INTO idx_date(rk, param, lo, hi) VALUES (?,?,?,?)",
                                  [(rk, *row) for row in rows.dates])
        if rows.strings:
            self.conn.executemany("INSERT INTO idx_string(rk, param, norm, raw) VALUES (?,?,?,?)",
                                  [(rk, *row) for row in rows.strings])

    def _unindex(self, rk: int) -> None:
        for table in ("idx_token", "idx_ref", "idx_date", "idx_string"):
            self.conn.execute(f"DELETE FROM {table} WHERE rk = ?", (rk,))  # noqa: S608 (fixed names)

    def reindex_all(self) -> int:
        """Rebuild every index row from the current versions; returns the number indexed."""
        for table in ("idx_token", "idx_ref", "idx_date", "idx_string"):
            self.conn.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
        rows = self.conn.execute(
            "SELECT r.rk, v.body FROM resources r JOIN versions v ON v.rk = r.rk AND v.version = r.version "
            "WHERE r.deleted = 0").fetchall()
        for rk, body in rows:
            self.index(rk, json.loads(body))
        return len(rows)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit (one batch entry): rolled back alone when it raises."""
        self.conn.execute("SAVEPOINT entry")
        mark = len(self.changes)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO entry")
            self.conn.execute("RELEASE entry")
            del self.changes[mark:]
            raise
        self.conn.execute("RELEASE entry")

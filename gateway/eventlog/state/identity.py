"""The identity index: persons, their identifiers, and what was last published for each of them.

One SQLite file (``<data_dir>/identity.sqlite``, mode 0600, WAL) or an in-memory database. Tables:

- ``person``: one row per Patient id the resolver ever created; ``survivor`` is NULL while it is
  an active person, else the person it was merged or linked into; ``nam`` its NAM when known;
  ``key`` the ``system|value`` its id derives from.
- ``ident``: the identifiers each person carries (FHIR Identifier JSON); ``is_key`` marks identity
  keys (valid NAM, site record numbers), unique among all persons (a key names one person).
- ``resource``: the last published version of every resource that belongs to a person (Patient
  records, Encounters, Conditions, RelatedPersons, possible-duplicate Flags), with the event time
  (epoch ms of EVN-2, else MSH-7) of the message that last changed it: what stale-write checks
  compare and what a link or a merge re-publishes under the survivor; ``times``: the event time of
  each of its elements (units, mappings/merge.py) as last said by any message, a ``""`` included,
  what per-element survivorship compares (README.md, "Survivorship").
- ``cluster``: per active person with a complete demographic key, the key's digest (never names
  or dates), whether it has a NAM, and whether its possible-duplicate Flag is open: look-alikes
  (same digest) form one cluster (README.md, "Possible duplicates").
- ``dup``: possible-duplicate pairs (the Flag id, both persons, active or resolved).
- ``journal``: per source message (sender|MSH-10), the resources a link or merge re-published, so
  that mapping the same message again re-publishes their current versions (idempotent output).
- ``provenance``: per Provenance id (one per message), the references its targets were rewritten
  with when the message was first resolved (usually ``{}``): a Provenance is history, and a replay
  of the message must not re-point it at what the person became later.

Every call happens inside :meth:`IdentityIndex.transaction` (one lock, one ``BEGIN IMMEDIATE``): a
message is resolved all or nothing, and a refused message (MapError) leaves no trace.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import walcheckpoint
from gateway.eventlog.embedded import secure_file

JSON = dict[str, Any]
FILE_NAME = "identity.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS person (id TEXT PRIMARY KEY, key TEXT NOT NULL, nam TEXT, survivor TEXT);
CREATE INDEX IF NOT EXISTS person_survivor ON person(survivor);
CREATE TABLE IF NOT EXISTS ident (person TEXT NOT NULL, key TEXT NOT NULL, is_key INTEGER NOT NULL,
  body TEXT NOT NULL, PRIMARY KEY (person, key));
CREATE UNIQUE INDEX IF NOT EXISTS ident_key ON ident(key) WHERE is_key = 1;
CREATE TABLE IF NOT EXISTS resource (rtype TEXT NOT NULL, id TEXT NOT NULL, person TEXT NOT NULL,
  event_ms INTEGER NOT NULL, body TEXT NOT NULL, times TEXT, PRIMARY KEY (rtype, id));
CREATE INDEX IF NOT EXISTS resource_person ON resource(person, rtype);
CREATE TABLE IF NOT EXISTS cluster (person TEXT PRIMARY KEY, digest TEXT NOT NULL, nam INTEGER NOT NULL,
  flagged INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS cluster_nam ON cluster(digest, nam);
CREATE INDEX IF NOT EXISTS cluster_flagged ON cluster(digest, flagged);
CREATE TABLE IF NOT EXISTS dup (id TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, active INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS dup_b ON dup(b);
CREATE TABLE IF NOT EXISTS journal (message TEXT NOT NULL, rtype TEXT NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY (message, rtype, id));
CREATE TABLE IF NOT EXISTS provenance (id TEXT PRIMARY KEY, refs TEXT NOT NULL);
"""
_TABLES = ("person", "ident", "resource", "cluster", "dup", "journal", "provenance")


@dataclass(frozen=True, slots=True)
class Person:
    """A person row: ``survivor`` None while active."""

    id: str
    key: str
    nam: str | None
    survivor: str | None


@dataclass(frozen=True, slots=True)
class Stored:
    """The last published version of a resource that belongs to ``person``."""

    rtype: str
    id: str
    person: str
    event_ms: int
    body: JSON
    times: dict[str, int] | None = None  # per element; None: keep what is stored (a re-publication)


@dataclass(frozen=True, slots=True)
class Pair:
    """A possible-duplicate pair (``id`` is the Flag id)."""

    id: str
    a: str
    b: str
    active: bool


def _dump(body: JSON) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class IdentityIndex:
    """Typed access to the index tables (see module docstring). Thread-safe through one lock."""

    def __init__(self, data_dir: Path | None) -> None:
        self._path: Path | None = None
        if data_dir is None:
            target = ":memory:"
        else:
            self._path = Path(data_dir) / FILE_NAME
            secure_file(self._path)
            target = str(self._path)
        self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA busy_timeout=30000")
        if self._path is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            walcheckpoint.watch(self._conn, self._path)
        self._conn.executescript(_SCHEMA)
        columns = {str(row[1]) for row in self._conn.execute("PRAGMA table_info(resource)")}
        if "times" not in columns:  # an index from before element times: they start from event_ms
            self._conn.execute("ALTER TABLE resource ADD COLUMN times TEXT")
        self._lock = threading.RLock()
        self._closed = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[IdentityIndex]:
        """All or nothing, one caller at a time."""
        with self._lock:
            if self._closed:
                raise RuntimeError("identity index closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._path is not None:
                    walcheckpoint.unwatch(self._path)
                self._conn.close()

    def clear(self) -> None:
        """Empty every table (before a rebuild)."""
        with self.transaction():
            for table in _TABLES:
                self._conn.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed table names)

    # -- persons ---------------------------------------------------------------------------------
    def person(self, pid: str) -> Person | None:
        row = self._conn.execute("SELECT id, key, nam, survivor FROM person WHERE id = ?", (pid,)).fetchone()
        return None if row is None else Person(row[0], row[1], row[2], row[3])

    def final(self, pid: str) -> str:
        """The active person ``pid`` ends up in (itself when active or unknown)."""
        seen = {pid}
        current = self.person(pid)
        while current is not None and current.survivor is not None and current.survivor not in seen:
            seen.add(current.survivor)
            pid = current.survivor
            current = self.person(pid)
        return pid

    def add_person(self, pid: str, key: str, nam: str | None, survivor: str | None = None) -> None:
        self._conn.execute("INSERT OR IGNORE INTO person(id, key, nam, survivor) VALUES (?,?,?,?)",
                           (pid, key, nam, survivor))

    def retire(self, pid: str, survivor: str) -> None:
        """``pid`` (and every person already merged into it) now ends up in ``survivor``."""
        self._conn.execute("UPDATE person SET survivor = ? WHERE id = ? OR survivor = ?", (survivor, pid, pid))

    def active_persons(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM person WHERE survivor IS NULL").fetchone()[0])

    # -- identifiers -----------------------------------------------------------------------------
    def person_of_key(self, key: str) -> str | None:
        row = self._conn.execute("SELECT person FROM ident WHERE key = ? AND is_key = 1", (key,)).fetchone()
        return None if row is None else str(row[0])

    def identifiers(self, person: str) -> list[tuple[str, bool, JSON]]:
        rows = self._conn.execute("SELECT key, is_key, body FROM ident WHERE person = ? ORDER BY key", (person,))
        return [(str(k), bool(is_key), json.loads(body)) for k, is_key, body in rows]

    def identifier(self, person: str, key: str) -> tuple[bool, JSON] | None:
        row = self._conn.execute("SELECT is_key, body FROM ident WHERE person = ? AND key = ?",
                                 (person, key)).fetchone()
        return None if row is None else (bool(row[0]), json.loads(row[1]))

    def put_identifier(self, person: str, key: str, is_key: bool, body: JSON) -> None:
        self._conn.execute(
            "INSERT INTO ident(person, key, is_key, body) VALUES (?,?,?,?) ON CONFLICT(person, key) "
            "DO UPDATE SET is_key = max(is_key, excluded.is_key), body = excluded.body",
            (person, key, int(is_key), _dump(body)))

    def move_identifiers(self, src: str, dst: str) -> None:
        """Every identifier of ``src`` now belongs to ``dst`` (those ``dst`` already has are kept once)."""
        for key, is_key, body in self.identifiers(src):
            self._conn.execute("DELETE FROM ident WHERE person = ? AND key = ?", (src, key))
            existing = self.identifier(dst, key)
            self.put_identifier(dst, key, is_key or bool(existing and existing[0]),
                                existing[1] if existing else body)

    # -- published resources ---------------------------------------------------------------------
    def resource(self, rtype: str, rid: str) -> Stored | None:
        row = self._conn.execute("SELECT person, event_ms, body, times FROM resource WHERE rtype = ? AND id = ?",
                                 (rtype, rid)).fetchone()
        if row is None:
            return None
        return Stored(rtype, rid, row[0], int(row[1]), json.loads(row[2]), json.loads(row[3]) if row[3] else {})

    def resources_of(self, person: str, rtype: str | None = None) -> list[Stored]:
        """The person's resources (of one type), by type and id. Sorted here, not in SQL: an
        ``ORDER BY id`` lets SQLite prefer the primary key and scan every row of the type."""
        if rtype is None:
            rows = self._conn.execute("SELECT rtype, id, event_ms, body FROM resource WHERE person = ?", (person,))
        else:
            rows = self._conn.execute("SELECT rtype, id, event_ms, body FROM resource WHERE person = ? AND rtype = ?",
                                      (person, rtype))
        found = sorted((str(t), str(i), int(ms), str(b)) for t, i, ms, b in rows)
        return [Stored(t, i, person, ms, json.loads(b)) for t, i, ms, b in found]

    def record_ids(self, person: str) -> list[str]:
        """Ids of the Patient records that belong to ``person`` (itself and the retired ones)."""
        rows = self._conn.execute("SELECT id FROM resource WHERE person = ? AND rtype = 'Patient'", (person,))
        return sorted(str(r[0]) for r in rows)

    def put_resource(self, stored: Stored) -> None:
        """Write ``stored``; its element times too, unless ``times`` is None (kept as stored)."""
        times = None if stored.times is None else json.dumps(stored.times, separators=(",", ":"))
        self._conn.execute(
            "INSERT INTO resource(rtype, id, person, event_ms, body, times) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(rtype, id) DO UPDATE SET person = excluded.person, event_ms = excluded.event_ms, "
            "body = excluded.body, times = coalesce(excluded.times, resource.times)",
            (stored.rtype, stored.id, stored.person, stored.event_ms, _dump(stored.body), times))

    # -- demographic keys and possible duplicates ------------------------------------------------
    def member(self, person: str) -> tuple[str, bool, bool] | None:
        """(digest, has a NAM, Flag open) of a cluster member, None when in no cluster."""
        row = self._conn.execute("SELECT digest, nam, flagged FROM cluster WHERE person = ?", (person,)).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]), bool(row[2]))

    def join(self, person: str, digest: str, nam: bool) -> None:
        """``person`` is in the cluster ``digest`` (its join order, the rowid, is kept on updates)."""
        self._conn.execute(
            "INSERT INTO cluster(person, digest, nam, flagged) VALUES (?,?,?,0) ON CONFLICT(person) DO UPDATE "
            "SET nam = excluded.nam, flagged = CASE WHEN digest = excluded.digest THEN flagged ELSE 0 END, "
            "digest = excluded.digest", (person, digest, int(nam)))

    def leave(self, person: str) -> None:
        self._conn.execute("DELETE FROM cluster WHERE person = ?", (person,))

    def set_flagged(self, person: str, flagged: bool) -> None:
        self._conn.execute("UPDATE cluster SET flagged = ? WHERE person = ?", (int(flagged), person))

    def partner(self, digest: str, person: str, *, without_nam: bool) -> str | None:
        """The earliest other member of the cluster (without a NAM, or any): two index probes."""
        found: list[tuple[int, str]] = []
        for nam in (0,) if without_nam else (0, 1):
            row = self._conn.execute("SELECT rowid, person FROM cluster WHERE digest = ? AND nam = ? AND person != ? "
                                     "ORDER BY rowid LIMIT 1", (digest, nam, person)).fetchone()
            if row is not None:
                found.append((int(row[0]), str(row[1])))
        return min(found)[1] if found else None

    def unflagged(self, digest: str, person: str, *, without_nam: bool) -> list[str]:
        """Members of the cluster (without a NAM, or any) other than ``person`` whose Flag is not open."""
        rows = self._conn.execute("SELECT person, nam FROM cluster WHERE digest = ? AND flagged = 0 AND person != ? "
                                  "ORDER BY rowid", (digest, person))
        return [str(p) for p, nam in rows if not (without_nam and nam)]

    def flags_naming(self, person: str) -> list[Pair]:
        """Open possible-duplicate Flags whose other record is ``person``."""
        rows = self._conn.execute("SELECT id, a, b, active FROM dup WHERE b = ? AND active = 1 ORDER BY id", (person,))
        return [Pair(str(i), str(a), str(b), bool(act)) for i, a, b, act in rows]

    def pair(self, pair_id: str) -> Pair | None:
        row = self._conn.execute("SELECT id, a, b, active FROM dup WHERE id = ?", (pair_id,)).fetchone()
        return None if row is None else Pair(str(row[0]), str(row[1]), str(row[2]), bool(row[3]))

    def put_pair(self, pair: Pair) -> None:
        self._conn.execute("INSERT OR REPLACE INTO dup(id, a, b, active) VALUES (?,?,?,?)",
                           (pair.id, pair.a, pair.b, int(pair.active)))

    def pairs(self, *, include_resolved: bool = False) -> list[Pair]:
        rows = self._conn.execute("SELECT id, a, b, active FROM dup WHERE active >= ? ORDER BY id",
                                  (0 if include_resolved else 1,))
        return [Pair(str(i), str(a), str(b), bool(act)) for i, a, b, act in rows]

    # -- provenance targets as first resolved ----------------------------------------------------
    def provenance_refs(self, prov_id: str) -> dict[str, str] | None:
        row = self._conn.execute("SELECT refs FROM provenance WHERE id = ?", (prov_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put_provenance_refs(self, prov_id: str, refs: dict[str, str]) -> None:
        self._conn.execute("INSERT OR IGNORE INTO provenance(id, refs) VALUES (?, ?)",
                           (prov_id, json.dumps(refs, sort_keys=True, separators=(",", ":"))))

    # -- journal of re-published resources -------------------------------------------------------
    def journal(self, message: str) -> list[tuple[str, str]]:
        rows = self._conn.execute("SELECT rtype, id FROM journal WHERE message = ? ORDER BY rtype, id", (message,))
        return [(str(t), str(i)) for t, i in rows]

    def add_journal(self, message: str, rtype: str, rid: str) -> None:
        self._conn.execute("INSERT OR IGNORE INTO journal(message, rtype, id) VALUES (?,?,?)", (message, rtype, rid))

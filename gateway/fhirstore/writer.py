"""Writes inside one SQLite transaction: versioned put, delete, conditional look-ups, re-indexing.

A :class:`Writer` is only obtained from ``FhirStore.writing()``, which holds the write lock and
an open ``BEGIN IMMEDIATE`` transaction; everything done through it commits or rolls back
together. A put whose content equals the current version (canonical JSON, ignoring
``meta.versionId`` and ``meta.lastUpdated``) writes nothing; otherwise it writes version n+1,
stamps ``meta``, keeps the previous versions and re-indexes the resource. Each write that changed
something is appended to ``Writer.changes``; the store hands that list to its listeners once the
transaction has committed (see ``FhirStore.add_listener``).

``put_many`` is the store sink's path (``FhirStore.upsert_many``): the outcomes of ``put`` for each
resource in order, in a number of statements that does not grow with the batch — one SELECT of the
batch's current rows, then ``executemany`` for resource rows, versions and index rows. An unchanged
resource costs its digest only; a resource changed twice in one batch gets both versions and is
indexed once (its last version). Each resource is serialised once: its body text (all but
resourceType, id and meta) gives both the digest and the stored text; a resource handed as JSON
text is parsed only when it changed (:mod:`gateway.fhirstore.content`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import StoreError
from gateway.fhirstore.content import Prepared, body_text, content_of, digest, prepare, prepare_text, same_content
from gateway.fhirstore.content import check_id as check_id  # re-exported (the store's modules import them here)
from gateway.fhirstore.content import check_type as check_type
from gateway.fhirstore.dates import instant_text
from gateway.fhirstore.extract import extract
from gateway.fhirstore.params import RESULT_PARAMS
from gateway.fhirstore.query import Params, parse_search
from gateway.fhirstore.search import Entry, read_current, search

Status = Literal["created", "updated", "unchanged", "deleted"]
_IN_CHUNK = 500  # ids per "IN (...)" look-up (SQLite's variable limit is far above)
_INDEX_SQL = (
    ("tokens", "INSERT INTO idx_token(rk, param, system, code) VALUES (?,?,?,?)"),
    ("refs", "INSERT INTO idx_ref(rk, param, ttype, tid) VALUES (?,?,?,?)"),
    ("dates", "INSERT INTO idx_date(rk, param, lo, hi) VALUES (?,?,?,?)"),
    ("strings", "INSERT INTO idx_string(rk, param, norm, raw) VALUES (?,?,?,?)"),
)
_INDEX_TABLES = ("idx_token", "idx_ref", "idx_date", "idx_string")


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


class Writer:
    """Write operations on the store's write connection, inside one open transaction."""

    def __init__(self, conn: sqlite3.Connection, now_ms: int) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self.changes: list[Outcome] = []  # what this transaction changed, in order (for store listeners)
        self._instants: dict[int, str] = {}

    def read(self, rtype: str, rid: str) -> Entry:
        """The current version of one resource as this transaction sees it (StoreError 404 unknown,
        410 deleted): what a check inside the write (the privacy boundary, a Subscription's status)
        reads, without the write connection leaving the store."""
        return read_current(self.conn, rtype, rid)

    def _current(self, rtype: str, rid: str) -> _Current | None:
        row = self.conn.execute(
            "SELECT rk, version, lu_ms, deleted, hash FROM resources WHERE rtype = ? AND id = ?",
            (rtype, rid)).fetchone()
        return None if row is None else _Current(row[0], row[1], row[2], bool(row[3]), row[4])

    def _current_many(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], _Current]:
        """The current rows of ``keys`` ((type, id) pairs), one query per type and 500 ids."""
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        out: dict[tuple[str, str], _Current] = {}
        for rtype, ids in by_type.items():
            for at in range(0, len(ids), _IN_CHUNK):
                chunk = ids[at:at + _IN_CHUNK]
                rows = self.conn.execute(
                    "SELECT rk, id, version, lu_ms, deleted, hash FROM resources "  # noqa: S608 (marks only)
                    f"WHERE rtype = ? AND id IN ({','.join('?' * len(chunk))})", (rtype, *chunk))
                for rk, rid, version, lu_ms, deleted, hash_ in rows:
                    out[(rtype, rid)] = _Current(rk, version, lu_ms, bool(deleted), hash_)
        return out

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
        p = prepare(resource)
        rtype, rid, content, new_digest = p.rtype, p.rid, p.content, p.digest
        cur = self._current(rtype, rid)
        self._check_match(cur, if_match)
        if cur is not None and self._same(cur, p, {} if cur.digest == p.digest else self._bodies({cur.rk})):
            unchanged = self._stamp(content, cur.version, cur.lu_ms)
            return Outcome(rtype, rid, cur.version, cur.lu_ms, "unchanged", unchanged)
        version = 1 if cur is None else cur.version + 1
        lu_ms = self.now_ms if cur is None else max(self.now_ms, cur.lu_ms)
        stored = self._stamp(content, version, lu_ms)
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
                          (rk, rtype, version, lu_ms, method, body_text(stored, p.base)))
        self.index(rk, stored)
        status: Status = "created" if cur is None or cur.deleted else "updated"
        outcome = Outcome(rtype, rid, version, lu_ms, status, stored)
        self.changes.append(outcome)
        return outcome

    def put_many(self, resources: Sequence[dict[str, Any] | str], ranks: list[int] | None = None, *,
                 copies: bool = True) -> list[Outcome]:
        """``put`` of each resource in order (method PUT, no If-Match), batched (module docstring).
        A resource may be its compact JSON text (``content.prepare_text``: parsed only when it changed).
        ``ranks``: see FhirStore.upsert_many (a copy ranked below the stored one changes nothing).
        ``copies``: False leaves the resource of "unchanged" outcomes None (nothing parsed for them)."""
        prepared = [prepare_text(r) if isinstance(r, str) else prepare(r) for r in resources]  # before any write
        current = self._current_many({(p.rtype, p.rid) for p in prepared})
        bodies = self._bodies({cur.rk for p in prepared if (cur := current.get((p.rtype, p.rid))) is not None
                               and not cur.deleted and cur.digest != p.digest})
        existed = {cur.rk for cur in current.values()}
        next_rk = int(self.conn.execute("SELECT coalesce(max(rk), 0) + 1 FROM resources").fetchone()[0])
        held = self._ranks({cur.rk for cur in current.values()}) if ranks and any(ranks) else {}
        outcomes: list[Outcome] = []
        versions: list[tuple[Any, ...]] = []
        last: dict[int, tuple[Prepared, dict[str, Any]]] = {}  # rk → its last version this batch
        for n, p in enumerate(prepared):
            cur = current.get((p.rtype, p.rid))
            rank = ranks[n] if ranks else 0
            if rank and cur is not None:
                if held.get(cur.rk, 0) > rank:  # older news: the store holds a later resolution's copy
                    outcomes.append(self._unchanged(p, cur, copies))
                    continue
                held[cur.rk] = rank
            elif rank:
                held[next_rk] = rank
            if cur is not None and self._same(cur, p, bodies):
                outcomes.append(self._unchanged(p, cur, copies))
                if cur.digest != p.digest:  # same content in another key order: the digest was replaced
                    current[(p.rtype, p.rid)] = _Current(cur.rk, cur.version, cur.lu_ms, False, p.digest)
                continue
            rk = next_rk if cur is None else cur.rk
            next_rk += cur is None
            version = 1 if cur is None else cur.version + 1
            lu_ms = self.now_ms if cur is None else max(self.now_ms, cur.lu_ms)
            stored = self._stamp(p.content, version, lu_ms)
            versions.append((rk, p.rtype, version, lu_ms, "PUT", body := body_text(stored, p.base)))
            bodies[rk] = (version, body)
            current[(p.rtype, p.rid)] = _Current(rk, version, lu_ms, False, p.digest)
            last[rk] = (p, stored)
            status: Status = "created" if cur is None or cur.deleted else "updated"
            outcome = Outcome(p.rtype, p.rid, version, lu_ms, status, stored)
            outcomes.append(outcome)
            self.changes.append(outcome)
        self._write_rows(current, existed, versions, last)
        if held:
            self.conn.executemany("INSERT INTO ranks(rk, resolved) VALUES (?, ?) ON CONFLICT(rk) DO UPDATE "
                                  "SET resolved = max(resolved, excluded.resolved)", list(held.items()))
        return outcomes

    def _unchanged(self, p: Prepared, cur: _Current, copies: bool) -> Outcome:
        resource = self._stamp(p.content, cur.version, cur.lu_ms) if copies else None
        return Outcome(p.rtype, p.rid, cur.version, cur.lu_ms, "unchanged", resource)

    def _same(self, cur: _Current, p: Prepared, bodies: dict[int, tuple[int, str]]) -> bool:
        """Whether ``p`` holds the content of ``cur``, a current version (``bodies``: rk → (version,
        body text) of those whose digest differs): equal digests, or equal content in another key order
        (``content.same_content``; its digest then becomes ``p``'s, so its next copy compares quickly)."""
        if cur.deleted:
            return False
        if cur.digest == p.digest:
            return True
        version, body = bodies.get(cur.rk, (0, ""))
        if version != cur.version or not same_content(p, body):
            return False
        self.conn.execute("UPDATE resources SET hash = ? WHERE rk = ?", (p.digest, cur.rk))
        return True

    def _bodies(self, rks: set[int]) -> dict[int, tuple[int, str]]:
        """rk → (version, body text) of the current version of each of ``rks`` (live ones), one query per 500."""
        out: dict[int, tuple[int, str]] = {}
        ordered = sorted(rks)
        for at in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[at:at + _IN_CHUNK]
            rows = self.conn.execute(
                "SELECT r.rk, r.version, v.body FROM resources r JOIN versions v ON v.rk = r.rk AND "  # noqa: S608
                f"v.version = r.version WHERE r.deleted = 0 AND r.rk IN ({','.join('?' * len(chunk))})", chunk)
            out.update((int(rk), (int(version), str(body))) for rk, version, body in rows)
        return out

    def _ranks(self, rks: set[int]) -> dict[int, int]:
        """The rank of the copy each of ``rks`` holds (FhirStore.upsert_many), one query per 500."""
        out: dict[int, int] = {}
        ordered = sorted(rks)
        for at in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[at:at + _IN_CHUNK]
            rows = self.conn.execute(f"SELECT rk, resolved FROM ranks WHERE rk IN ({','.join('?' * len(chunk))})",  # noqa: S608
                                     chunk)
            out.update((int(rk), int(resolved)) for rk, resolved in rows)
        return out

    def _write_rows(self, current: dict[tuple[str, str], _Current], existed: set[int],
                    versions: list[tuple[Any, ...]], last: dict[int, tuple[Prepared, dict[str, Any]]]) -> None:
        """The statements of ``put_many``: resource rows, versions, then the index of each changed resource."""
        if not last:
            return
        rows = [(cur.rk, rtype, rid, cur.version, cur.lu_ms, cur.digest)
                for (rtype, rid), cur in current.items() if cur.rk in last]
        self.conn.executemany("INSERT INTO resources(rk, rtype, id, version, lu_ms, deleted, hash) "
                              "VALUES (?,?,?,?,?,0,?)", [r for r in rows if r[0] not in existed])
        self.conn.executemany("UPDATE resources SET version = ?, lu_ms = ?, deleted = 0, hash = ? WHERE rk = ?",
                              [(r[3], r[4], r[5], r[0]) for r in rows if r[0] in existed])
        stale = [(rk,) for rk in last if rk in existed]
        if stale:
            for table in _INDEX_TABLES:
                self.conn.executemany(f"DELETE FROM {table} WHERE rk = ?", stale)  # noqa: S608 (fixed names)
        self.conn.executemany("INSERT INTO versions(rk, rtype, version, lu_ms, method, body) VALUES (?,?,?,?,?,?)",
                              versions)
        index: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind, _sql in _INDEX_SQL}
        for rk, (_p, stored) in last.items():
            extracted = extract(stored)
            for kind, _sql in _INDEX_SQL:
                index[kind].extend([(rk, *row) for row in getattr(extracted, kind)])
        for kind, sql in _INDEX_SQL:
            if index[kind]:
                self.conn.executemany(sql, index[kind])

    def _stamp(self, content: dict[str, Any], version: int, lu_ms: int) -> dict[str, Any]:
        """``content`` with ``meta.versionId``/``lastUpdated`` first; this transaction's instants are
        formatted once (a batch shares one or two)."""
        text = self._instants.get(lu_ms)
        if text is None:
            text = self._instants[lu_ms] = instant_text(lu_ms)
        got = content.get("meta")
        meta: dict[str, Any] = got if isinstance(got, dict) else {}
        head = {"resourceType": content["resourceType"], "id": content["id"],
                "meta": {"versionId": str(version), "lastUpdated": text, **meta}}
        return head | {k: v for k, v in content.items() if k not in head}

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

    def rehash_all(self) -> int:
        """Recompute the digest of every current resource (a new :data:`DIGEST_SCHEME`); returns how many."""
        rows = self.conn.execute(
            "SELECT r.rk, v.body FROM resources r JOIN versions v ON v.rk = r.rk AND v.version = r.version "
            "WHERE r.deleted = 0").fetchall()
        self.conn.executemany("UPDATE resources SET hash = ? WHERE rk = ?",
                              [(digest(content_of(json.loads(body))), rk) for rk, body in rows])
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

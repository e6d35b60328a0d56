"""The embedded FHIR R4 store: one SQLite file (WAL, synchronous=FULL, mode 0600).

Tables: ``resources`` (one row per logical resource: current version, time, deleted flag, content
digest), ``versions`` (every version's JSON, the history), and four index tables (``idx_token``,
``idx_ref``, ``idx_date``, ``idx_string``) filled on write from the search-parameter table in
:mod:`gateway.fhirstore.params`; when that table changes, the index is rebuilt on open, and when
the content digest's scheme changes (``content.DIGEST_SCHEME``), the digests are recomputed on open.

Threads: writes go through one connection under a lock, one ``BEGIN IMMEDIATE`` transaction per
call (a whole ``upsert_many`` batch, a whole FHIR transaction); readers (FastAPI's worker threads)
use one connection per thread and read a consistent snapshot (WAL readers never wait on writers).

Listeners (``add_listener``): after each committed write transaction that changed something — an
``upsert_many`` batch, an HTTP create/update/delete, a whole transaction or batch Bundle — every
listener is called once with the list of :class:`Outcome` (created/updated/deleted, in write
order). The call comes after COMMIT (never inside the SQLite transaction) but still under the
write lock, so listeners see commits in commit order; a listener must therefore be quick and must
not write to the store (hand the changes to a queue). A listener that raises is logged (exception
type only) and never fails the write.

Write checks (``add_write_check``): called by the FHIR API (create, update, transaction and batch
entries) with each resource of that type a client is about to write, before the write lock is
taken; one raises StoreError to refuse the write (e.g. the subscription engine refuses endpoints
on private addresses with 422). The store's own writers (``upsert_many``, ``update``) skip them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import PublishError, StoreError
from gateway.eventlog.embedded import private_dir
from gateway.fhirstore import params as _params
from gateway.fhirstore.content import DIGEST_SCHEME
from gateway.fhirstore.query import Params, Query, parse_history, parse_search
from gateway.fhirstore.search import Entry, Page, history, read_current, search
from gateway.fhirstore.writer import Outcome, Writer, check_id, check_type

log = logging.getLogger("pivot.fhirstore")

StoreListener = Callable[[list[Outcome]], None]
"""Called after each committed write with what it changed (see the module docstring)."""
WriteCheck = Callable[[dict[str, Any]], None]
"""Called with a resource a client is about to write through the FHIR API; raises StoreError to refuse."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
  rk INTEGER PRIMARY KEY, rtype TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
  lu_ms INTEGER NOT NULL, deleted INTEGER NOT NULL, hash BLOB NOT NULL, UNIQUE (rtype, id));
CREATE INDEX IF NOT EXISTS resources_order ON resources(rtype, lu_ms, id);
CREATE TABLE IF NOT EXISTS versions (
  seq INTEGER PRIMARY KEY, rk INTEGER NOT NULL, rtype TEXT NOT NULL, version INTEGER NOT NULL,
  lu_ms INTEGER NOT NULL, method TEXT NOT NULL, body TEXT, UNIQUE (rk, version));
CREATE INDEX IF NOT EXISTS versions_type ON versions(rtype, seq);
CREATE TABLE IF NOT EXISTS idx_token (rk INTEGER NOT NULL, param TEXT NOT NULL, system TEXT NOT NULL,
  code TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_token_value ON idx_token(param, code, system);
CREATE INDEX IF NOT EXISTS idx_token_rk ON idx_token(rk);
CREATE TABLE IF NOT EXISTS idx_ref (rk INTEGER NOT NULL, param TEXT NOT NULL, ttype TEXT NOT NULL,
  tid TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_ref_value ON idx_ref(param, tid, ttype);
CREATE INDEX IF NOT EXISTS idx_ref_rk ON idx_ref(rk);
CREATE TABLE IF NOT EXISTS idx_date (rk INTEGER NOT NULL, param TEXT NOT NULL, lo INTEGER NOT NULL,
  hi INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idx_date_value ON idx_date(param, lo, hi);
CREATE INDEX IF NOT EXISTS idx_date_rk ON idx_date(rk);
CREATE TABLE IF NOT EXISTS idx_string (rk INTEGER NOT NULL, param TEXT NOT NULL, norm TEXT NOT NULL,
  raw TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_string_value ON idx_string(param, norm);
CREATE INDEX IF NOT EXISTS idx_string_rk ON idx_string(rk);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ranks (rk INTEGER PRIMARY KEY, resolved INTEGER NOT NULL);
"""


def _params_digest() -> str:
    text = repr(sorted((t, sorted(ps.items())) for t, ps in _params.SEARCH_PARAMS.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _secure_file(path: Path) -> None:
    """Create the database file readable by us only (SQLite gives new -wal/-shm files its mode)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            os.chmod(file, 0o600)


def _connect(path: Path, *, reader: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA cache_size=-32000")
    if reader:
        conn.execute("PRAGMA query_only=1")
    return conn


class FhirStore:
    """FHIR R4 resources in SQLite: versioned, searchable, safe for one writer + many readers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        _secure_file(self.path)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._listeners: list[StoreListener] = []
        self._write_checks: dict[str, tuple[WriteCheck, ...]] = {}
        self._conn = _connect(self.path, reader=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        self._reindex_if_params_changed()
        self._rehash_if_digest_changed()

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection; later calls raise StoreError (503)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            self._conn.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def _reindex_if_params_changed(self) -> None:
        wanted = _params_digest()
        row = self._conn.execute("SELECT value FROM store_meta WHERE key = 'params'").fetchone()
        if row is not None and row[0] == wanted:
            return
        with self.writing() as writer:
            writer.reindex_all()
            writer.conn.execute("INSERT OR REPLACE INTO store_meta(key, value) VALUES ('params', ?)", (wanted,))

    def _rehash_if_digest_changed(self) -> None:
        row = self._conn.execute("SELECT value FROM store_meta WHERE key = 'digest'").fetchone()
        if row is not None and row[0] == DIGEST_SCHEME:
            return
        with self.writing() as writer:
            count = writer.rehash_all()
            writer.conn.execute("INSERT OR REPLACE INTO store_meta(key, value) VALUES ('digest', ?)",
                                (DIGEST_SCHEME,))
        if count:
            log.info("FHIR store: %d content digests recomputed (digest scheme %s)", count, DIGEST_SCHEME)

    def reindex(self) -> int:
        """Rebuild the search index of every current resource; returns how many were indexed."""
        with self.writing() as writer:
            return writer.reindex_all()

    # -- listeners -------------------------------------------------------------------------------
    def add_listener(self, listener: StoreListener) -> None:
        """Call ``listener(changes)`` after every committed write that changed something."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: StoreListener) -> None:
        """Stop calling ``listener`` (unknown listeners are ignored)."""
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]

    def add_write_check(self, rtype: str, check: WriteCheck) -> None:
        """Run ``check(resource)`` before every FHIR API write of a ``rtype`` resource."""
        with self._lock:
            self._write_checks[rtype] = (*self._write_checks.get(rtype, ()), check)

    def remove_write_check(self, rtype: str, check: WriteCheck) -> None:
        """Stop running ``check`` (unknown checks are ignored)."""
        with self._lock:
            self._write_checks[rtype] = tuple(c for c in self._write_checks.get(rtype, ()) if c != check)

    def check_write(self, resource: dict[str, Any] | None) -> None:
        """The write checks of ``resource``'s type (FHIR API writes, outside the write lock)."""
        if resource is None:
            return
        for check in self._write_checks.get(str(resource.get("resourceType")), ()):
            check(resource)

    def _notify(self, changes: list[Outcome]) -> None:
        for listener in self._listeners:
            try:
                listener(list(changes))
            except Exception as exc:  # noqa: BLE001 - a listener never fails a committed write
                log.error("store listener %s failed with %s", getattr(listener, "__qualname__", "?"),
                          type(exc).__name__)

    # -- writing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[Writer]:
        """One write transaction (all or nothing) holding the write lock; listeners run after COMMIT."""
        with self._lock:
            if self._closed:
                raise StoreError("the FHIR store is closed", status=503, issue_code="transient")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            writer = Writer(conn, int(time.time() * 1000))
            try:
                yield writer
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if writer.changes and self._listeners:
                self._notify(writer.changes)

    def upsert_many(self, resources: list[dict[str, Any]],
                    ranks: list[int] | None = None) -> list[tuple[dict[str, Any], bool]]:
        """Write a batch in one transaction: ``(stored resource, changed?)`` per resource, in order.

        ``ranks``: per resource, the identity resolution that produced this copy (the fhir envelope's
        ``resolved``; 0: unranked, always written). A copy ranked below the one the store holds is
        older news arriving late (records of two messages mapped on two partitions or instances):
        it changes nothing (``changed`` False).

        Content equal to the current version (ignoring meta.versionId/lastUpdated) writes nothing;
        anything else becomes a new version. Resources are trusted (validated by the mapper).
        A database failure (disk full, locked too long) raises PublishError, which the store sink
        retries; a resource without a supported type or a valid id raises StoreError.
        """
        return [(o.resource or {}, o.changed) for o in self._put_many(resources, ranks, copies=True)]

    def upsert_texts(self, texts: list[str], ranks: list[int] | None = None) -> list[bool]:
        """:meth:`upsert_many` of resources given as their compact JSON text (a ``fhir.*`` envelope's,
        the store sink's path): changed? per resource. A copy whose digest is the stored one is not
        parsed at all (``content.prepare_text``); invalid JSON raises StoreError."""
        return [o.changed for o in self._put_many(texts, ranks, copies=False)]

    def _put_many(self, resources: Sequence[dict[str, Any] | str], ranks: list[int] | None, *,
                  copies: bool) -> list[Outcome]:
        if not resources:
            return []
        try:
            with self.writing() as writer:
                return writer.put_many(resources, ranks, copies=copies)
        except sqlite3.Error as exc:
            raise PublishError(f"FHIR store write failed ({type(exc).__name__})") from exc

    def update(self, resource: dict[str, Any], *, if_match: int | None = None) -> Outcome:
        with self.writing() as writer:
            return writer.put(resource, if_match=if_match)

    def delete(self, rtype: str, rid: str, *, if_match: int | None = None) -> Outcome:
        with self.writing() as writer:
            return writer.delete(rtype, rid, if_match=if_match)

    # -- reading ---------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._readers_lock:
                if self._closed:
                    raise StoreError("the FHIR store is closed", status=503, issue_code="transient")
                conn = _connect(self.path, reader=True)
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of this thread inside a read transaction (one consistent snapshot)."""
        if self._closed:
            raise StoreError("the FHIR store is closed", status=503, issue_code="transient")
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def read(self, rtype: str, rid: str) -> Entry:
        """The current version; StoreError 404 when unknown, 410 when deleted."""
        check_type(rtype)
        with self.reading() as conn:
            return read_current(conn, rtype, check_id(rid))

    def vread(self, rtype: str, rid: str, version: str) -> Entry:
        """One version; 404 when unknown, 410 when that version is a deletion."""
        check_type(rtype)
        if not (version.isascii() and version.isdigit()) or len(version) > 18:  # past SQLite's INTEGER: none
            raise StoreError("version not found", status=404, issue_code="not-found")
        with self.reading() as conn:
            row = conn.execute(
                "SELECT v.version, v.lu_ms, v.body, v.method FROM versions v JOIN resources r ON r.rk = v.rk "
                "WHERE r.rtype = ? AND r.id = ? AND v.version = ?", (rtype, check_id(rid), int(version))).fetchone()
        if row is None:
            raise StoreError("version not found", status=404, issue_code="not-found")
        if row[2] is None:
            raise StoreError("this version is a deletion", status=410, issue_code="deleted")
        return Entry(rtype, rid, row[0], row[1], json.loads(row[2]), row[3])

    def search(self, rtype: str, params: Params, *, strict: bool = False) -> tuple[Query, Page]:
        """A search of ``rtype``: the checked query and one page of results (see ``query``)."""
        check_type(rtype)
        q = parse_search(rtype, params, strict=strict)
        with self.reading() as conn:
            return q, search(conn, q)

    def history(self, rtype: str, rid: str | None, params: Params, *, strict: bool = False) -> tuple[Query, Page]:
        """History of a type (``rid`` None) or of one resource (404 when it never existed)."""
        check_type(rtype)
        q = parse_history(rtype, params, strict=strict)
        with self.reading() as conn:
            rk = None
            if rid is not None:
                row = conn.execute("SELECT rk FROM resources WHERE rtype = ? AND id = ?",
                                   (rtype, check_id(rid))).fetchone()
                if row is None:
                    raise StoreError("resource not found", status=404, issue_code="not-found")
                rk = int(row[0])
            return q, history(conn, q, rk)

    def counts(self) -> dict[str, int]:
        """Live resources per type (for metrics and the console)."""
        with self.reading() as conn:
            rows = conn.execute("SELECT rtype, count(*) FROM resources WHERE deleted = 0 GROUP BY rtype")
            return {str(t): int(n) for t, n in rows}

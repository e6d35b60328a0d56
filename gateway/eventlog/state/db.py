"""The dialect seam: one small API over SQLite (embedded) and PostgreSQL (``PIVOT_STATE_URL``).

Callers write portable SQL with ``?`` placeholders (``INSERT … ON CONFLICT … DO NOTHING/UPDATE``,
``RETURNING``, ``CASE``; no ``rowid``, no ``INSERT OR …``, no two-argument ``max``) and run it inside
:meth:`StateDb.transaction`. On PostgreSQL the placeholders become ``%s``.

A transaction is all or nothing. ``transaction(lock=NAME)`` also serialises every transaction that
takes the same lock, across threads and, on PostgreSQL, across instances: SQLite takes its write
lock at ``BEGIN IMMEDIATE`` (one writer per file anyway); PostgreSQL takes the transaction-scoped
advisory lock ``pg_advisory_xact_lock(hashtext(NAME))``, released at commit or rollback. Identity
resolution uses one such lock, so two instances resolving messages of the same person at the same
moment run one after the other and produce one person (the resolver reads and writes many rows per
message; a lock held for one short transaction is simpler and cheaper here than serializable
retries). A lost connection (the server restarted) is opened again at the next transaction; an
error while talking to the server is :class:`StateUnavailable`, which the callers turn into a
retry (workers) or an AR "system down" (intake): never an ACK for what was not stored.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import PublishError
from gateway.eventlog.embedded import begin_immediate, retry_busy, secure_file

log = logging.getLogger("pivot.state")
Row = tuple[Any, ...]
_BUSY_MS = 30_000


class StateUnavailable(PublishError):
    """The shared state could not be read or written (database down, connection lost)."""

    code = 1610


class Tx(Protocol):
    """What a transaction offers: portable SQL with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class StateDb:
    """One database of shared state (a SQLite file or a PostgreSQL database). Thread-safe."""

    engine = "sqlite"

    def transaction(self, lock: str | None = None) -> contextlib.AbstractContextManager[Tx]:
        raise NotImplementedError

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One statement as its own transaction (PostgreSQL: autocommit, one round trip instead of
        three); inside a transaction of this object, part of it."""
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One read-only statement (``run`` without taking a write lock where the engine has one)."""
        return self.run(sql, params)

    def close(self) -> None:
        raise NotImplementedError


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, [tuple(r) for r in rows])


class SqliteDb(StateDb):
    """A SQLite file (WAL, 0600 under the data dir, checkpointed in the background) or ``:memory:``."""

    engine = "sqlite"

    def __init__(self, path: Path | None) -> None:
        from gateway.eventlog import walcheckpoint

        self.path = path
        if path is not None:
            secure_file(path)
        self._conn = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None,
                                     check_same_thread=False, timeout=_BUSY_MS / 1000)
        self._conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        if path is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            walcheckpoint.watch(self._conn, path)
        # SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25… ms between tries, however short the
        # other process's transaction on the same file (the listener's handoff put and the mapping
        # worker's take); begin_immediate / retry_busy try again in steps of at most 2 ms.
        self._conn.execute("PRAGMA busy_timeout=0")
        self._lock = threading.RLock()
        self._closed = False
        self._depth = 0

    @contextlib.contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Tx]:
        """``lock`` is implied: SQLite has one writer per file (``BEGIN IMMEDIATE``). Nested calls
        join the outer transaction."""
        with self._lock:
            if self._closed:
                raise StateUnavailable("shared state closed")
            if self._depth:
                self._depth += 1
                try:
                    yield _SqliteTx(self._conn)
                finally:
                    self._depth -= 1
                return
            begin_immediate(self._conn, _BUSY_MS / 1000)
            self._depth = 1
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read outside a transaction runs in autocommit (a consistent snapshot of its own) instead of
        ``BEGIN IMMEDIATE`` … ``COMMIT``: no write lock taken, two statements fewer."""
        with self._lock:
            if self._closed:
                raise StateUnavailable("shared state closed")
            rows: list[Row] = retry_busy(lambda: self._conn.execute(sql, tuple(params)).fetchall(), _BUSY_MS / 1000)
            return rows

    def close(self) -> None:
        from gateway.eventlog import walcheckpoint

        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.path is not None:
                walcheckpoint.unwatch(self.path)
            self._conn.close()


class _PgTx:
    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cur.execute(_pg_sql(sql), tuple(params))
        return list(self._cur.fetchall()) if self._cur.description is not None else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(_pg_sql(sql), [tuple(r) for r in rows])


_translated: dict[str, str] = {}


def _pg_sql(sql: str) -> str:
    """``?`` → ``%s`` (and a literal ``%`` doubled), cached per statement text."""
    out = _translated.get(sql)
    if out is None:
        out = sql.replace("%", "%%").replace("?", "%s")
        if len(_translated) < 4096:
            _translated[sql] = out
    return out


class PostgresDb(StateDb):
    """A PostgreSQL database shared by every instance (``PIVOT_STATE_URL``). One connection per
    object, used by one thread at a time; reconnects after a lost connection."""

    engine = "postgresql"

    def __init__(self, url: str, *, application_name: str = "pivot") -> None:
        self.url = url
        self._application_name = application_name
        self._lock = threading.RLock()
        self._conn: Any = None
        self._closed = False
        self._depth = 0
        self._cur: Any = None
        with self._lock:
            self._connect()

    def _connect(self) -> Any:
        import psycopg

        try:
            self._conn = psycopg.connect(self.url, autocommit=True, application_name=self._application_name,
                                         connect_timeout=10)
        except psycopg.Error as exc:
            raise StateUnavailable(f"PIVOT_STATE_URL: cannot connect ({type(exc).__name__})") from exc
        return self._conn

    @contextlib.contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Tx]:
        import psycopg

        with self._lock:
            if self._closed:
                raise StateUnavailable("shared state closed")
            if self._depth:  # nested: join the outer transaction
                self._depth += 1
                try:
                    yield _PgTx(self._cur)
                finally:
                    self._depth -= 1
                return
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._connect()
            conn = self._conn
            try:
                cur = conn.cursor()
                cur.execute("BEGIN")
                if lock is not None:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            except psycopg.Error as exc:
                raise StateUnavailable(f"shared state unavailable ({type(exc).__name__})") from exc
            self._cur, self._depth = cur, 1
            try:
                yield _PgTx(cur)
            except BaseException as exc:
                self._depth, self._cur = 0, None
                with contextlib.suppress(psycopg.Error):
                    cur.execute("ROLLBACK")
                if isinstance(exc, psycopg.OperationalError):
                    raise StateUnavailable(f"shared state unavailable ({type(exc).__name__})") from exc
                raise
            self._depth, self._cur = 0, None
            try:
                cur.execute("COMMIT")
            except psycopg.Error as exc:
                raise StateUnavailable(f"shared state: commit failed ({type(exc).__name__})") from exc
            finally:
                cur.close()

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        import psycopg

        with self._lock:
            if self._closed:
                raise StateUnavailable("shared state closed")
            if self._depth:
                return _PgTx(self._cur).execute(sql, params)
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._connect()
                with self._conn.cursor() as cur:
                    return _PgTx(cur).execute(sql, params)
            except psycopg.OperationalError as exc:
                raise StateUnavailable(f"shared state unavailable ({type(exc).__name__})") from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()


def open_state(url: str, data_dir: Path | None, file_name: str, schema: str) -> StateDb:
    """The database of one part of the shared state, its migrations applied.

    ``url`` empty: the SQLite file ``data_dir/file_name`` (``:memory:`` when ``data_dir`` is None);
    else the PostgreSQL database at ``url`` (``postgresql://…``), every part in the same database.
    ``schema`` names the part's migrations folder (gateway/eventlog/state/migrations/<schema>/)."""
    from gateway.eventlog.state.migrate import migrate

    db: StateDb
    if url:
        db = PostgresDb(url, application_name=f"pivot-{schema}")
    else:
        db = SqliteDb(data_dir / file_name if data_dir is not None else None)
    try:
        migrate(db, schema)
    except BaseException:
        db.close()
        raise
    return db

"""The embedded event log: one SQLite file (WAL, synchronous=FULL) under PIVOT_DATA_DIR.

Appends go through one writer thread that commits whatever is queued in one transaction (group
commit): a caller returns only after the commit, i.e. after the fsync (``sync=False``: after the
write, the flush left to the next synced commit or checkpoint — derived records only). Every topic has a single
partition (0); the offset is a global sequence number. Consumer groups keep their committed
offsets in the same file. Semantics are those of one gateway process (plus CLI commands such as
``pivot ingest`` appending from another process: consumers re-query at least every 200 ms).

Across processes of one gateway (the MLLP listener process, gateway.listener) a pipe carries the
wake-ups: the writing process passes ``notify_fd`` (one byte written after each commit), the
reading process calls :meth:`EmbeddedLog.follow` on the other end, so its consumers see a record
appended elsewhere as soon as it is committed, not at the next 200 ms re-query.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from gateway.errors import PublishError
from gateway.eventlog import walcheckpoint
from gateway.eventlog.base import OutRecord, Record

log = logging.getLogger("pivot.eventlog")
_T = TypeVar("_T")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, headers TEXT NOT NULL, ts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_topic ON records(topic, seq);
CREATE TABLE IF NOT EXISTS offsets (
  grp TEXT NOT NULL, topic TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (grp, topic));
"""
_RECHECK_S = 0.2
_ONE_STATEMENT_ROWS = 6_000  # x 5 parameters: under SQLite's 32,766 bound parameters per statement
_FETCH_ARM = "SELECT * FROM (SELECT seq FROM records WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?)"
_Pending = tuple[list[OutRecord], threading.Event, list[BaseException], bool]  # records, done, error, sync


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def begin_immediate(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in steps of at most 2 ms.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25… ms between tries: behind another
    process's 5 ms transaction an ACK would wait ~20 ms. The connection's busy timeout is 0; this
    loop does the waiting."""
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), timeout_s)


def _insert_records(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Append ``rows`` in one transaction, holding the write lock as briefly as possible.

    Up to :data:`_ONE_STATEMENT_ROWS` rows are one multi-row INSERT run in autocommit: the write lock
    is taken, the rows written and the transaction committed (the fsync) inside ONE call into SQLite,
    which runs without the GIL. With ``BEGIN`` / ``INSERT`` / ``COMMIT`` as three calls, the lock was
    also held while this thread waited for the GIL between them — behind a busy worker thread of the
    same process, 5 ms (the interpreter's switch interval) or more each time, while the other
    process's ACKs waited for the lock. Larger batches (a bulk ingest) use an explicit transaction."""
    if len(rows) > _ONE_STATEMENT_ROWS:
        begin_immediate(conn)
        conn.executemany("INSERT INTO records(topic, key, value, headers, ts) VALUES (?,?,?,?,?)", rows)
        conn.execute("COMMIT")
        return
    sql = "INSERT INTO records(topic, key, value, headers, ts) VALUES " + ",".join(["(?,?,?,?,?)"] * len(rows))  # noqa: S608
    params = [value for row in rows for value in row]
    retry_busy(lambda: conn.execute(sql, params))


def retry_busy(run: Callable[[], _T], timeout_s: float = 30.0) -> _T:
    """``run()`` (one autocommit statement on a connection whose busy timeout is 0), tried again in
    steps of at most 2 ms while another connection holds the write lock (see :func:`begin_immediate`)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.0002
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.002)


def private_dir(path: Path) -> None:
    """Create the directory ``path`` 0700 (missing parents get the default mode). An existing one
    that other users may enter is tightened to 0700 with a warning — every file in it is ours alone
    (0600), so nobody legitimate loses access, while its listing (names, sizes, times) stops
    showing — unless it is a shared sticky directory (``/tmp``) or not ours: then only the warning."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if mode & stat.S_ISVTX or info.st_uid != os.geteuid():
        log.warning("data directory %s is open to other users (mode %03o); make it 0700", path, mode)
        return
    os.chmod(path, 0o700)
    log.warning("data directory %s was open to other users (mode %03o); now 0700", path, mode)


def secure_file(path: Path) -> None:
    """Create ``path`` (and its SQLite side files later inherit the umask) readable by us only, in
    a private directory (:func:`private_dir`)."""
    private_dir(path.parent)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    os.chmod(path, 0o600)


class EmbeddedLog:
    """EventLog on SQLite. Thread-safe; durable on return from ``append``/``append_many``."""

    global_offsets = True  # a record's offset is its seq: one sequence for every topic (base.read_in_order)

    def __init__(self, path: Path, *, notify_fd: int | None = None) -> None:
        self.path = path
        self._notify_fd = notify_fd
        secure_file(path)
        old = os.umask(0o077)
        try:
            self._conn = _connect(path)
            self._conn.executescript(_SCHEMA)
            walcheckpoint.watch(self._conn, path)
            self._conn.execute("PRAGMA busy_timeout=0")  # begin_immediate waits, in short steps
            self._synced = True  # synchronous=FULL (_connect)
        finally:
            os.umask(old)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._changed = threading.Condition()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="eventlog-writer", daemon=True)
        self._writer.start()

    # -- writing ---------------------------------------------------------------------------------
    def append(self, record: OutRecord) -> None:
        self.append_many([record])

    def append_many(self, records: list[OutRecord], *, sync: bool = True) -> None:
        """``sync=False`` (EventLog.append_many): committed without waiting for the disk, unless the
        same group commit carries a record that must be synced. Such a commit holds the write lock —
        which the MLLP listener's ACK appends wait for — for the time of the write only, not of a
        flush of ~500 KB (the mapping worker's appends)."""
        if not records:
            return
        if self._closed:
            raise PublishError("event log is closed")
        done = threading.Event()
        slot: list[BaseException] = []
        self._queue.put((list(records), done, slot, sync))
        done.wait()
        if slot:
            raise PublishError("event log write failed") from slot[0]

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch: list[_Pending] = [item]
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        now = int(time.time() * 1000)
        rows = []
        sync = False
        for item in batch:
            records, _done, _slot, item_sync = item
            sync = sync or item_sync
            for r in records:
                rows.append((r.topic, r.key, r.value, json.dumps(r.headers), now))
        error: BaseException | None = None
        try:
            if sync != self._synced:
                self._conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
                self._synced = sync
            _insert_records(self._conn, rows)
        except sqlite3.Error as exc:
            error = exc
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
        for item in batch:
            _records, done, slot, _sync = item
            if error is not None:
                slot.append(error)
            done.set()
        self._wake()
        if self._notify_fd is not None and error is None:
            with contextlib.suppress(OSError):  # a full pipe already holds a wake-up; a closed one: no reader
                os.write(self._notify_fd, b"\x01")

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def follow(self, fd: int) -> None:
        """Wake this process's consumers on every byte read from ``fd`` (commits of another process)."""
        def loop() -> None:
            while not self._closed:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    continue
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return
                if not data:
                    return
                self._wake()

        threading.Thread(target=loop, name="eventlog-follow", daemon=True).start()

    # -- reading ---------------------------------------------------------------------------------
    def consumer(self, group: str, topics: list[str], *, from_beginning: bool = True) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, group, topics, from_beginning)

    def read_all(self, topic: str) -> list[Record]:
        conn = _connect(self.path)
        try:
            rows = conn.execute(
                "SELECT seq, topic, key, value, headers, ts FROM records WHERE topic=? ORDER BY seq",
                (topic,)).fetchall()
        finally:
            conn.close()
        return [_record(row) for row in rows]

    def end_offset(self, topic: str) -> int:
        """Offset of the last record of ``topic`` (0 when empty)."""
        conn = _connect(self.path)
        try:
            row = conn.execute("SELECT MAX(seq) FROM records WHERE topic=?", (topic,)).fetchone()
        finally:
            conn.close()
        return int(row[0] or 0)

    def wait_for_change(self, timeout_s: float) -> None:
        with self._changed:
            self._changed.wait(timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=10)
        with self._changed:
            self._changed.notify_all()
        walcheckpoint.unwatch(self.path)
        self._conn.close()


def _record(row: tuple[int, str, bytes | None, bytes, str, int]) -> Record:
    seq, topic, key, value, headers, ts = row
    return Record(topic=topic, partition=0, offset=seq, key=key, value=bytes(value),
                  headers=json.loads(headers), timestamp_ms=ts)


class EmbeddedConsumer:
    """A consumer of the embedded log; committed offsets are kept per (group, topic)."""

    def __init__(self, log: EmbeddedLog, group: str, topics: list[str], from_beginning: bool) -> None:
        self._log = log
        self._group = group
        self._topics = list(topics)
        self._conn = _connect(log.path)
        # an offset commit needs no fsync of its own: the WAL is a sequence, so an offset that
        # survived a power cut means everything appended before it did; at worst a record is read
        # again (at least once). Each fsync here held the write lock an ACK's append waits for.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._positions: dict[str, int] = {}
        for topic in self._topics:
            row = self._conn.execute("SELECT seq FROM offsets WHERE grp=? AND topic=?",
                                     (group, topic)).fetchone()
            if row is not None:
                self._positions[topic] = int(row[0])
            elif from_beginning:
                self._positions[topic] = 0
            else:
                self._positions[topic] = log.end_offset(topic)
        self._committed = dict(self._positions)

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        while True:
            records = self._fetch(max_records)
            if records:
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._log._closed:
                return []
            self._log.wait_for_change(min(remaining, _RECHECK_S))

    def _fetch(self, max_records: int) -> list[Record]:
        """The next records after each topic's own position, in log order.

        One arm per topic, each reading at most ``max_records`` entries of the (topic, seq) index
        after that topic's own position (a topic that never receives anything must not hold the
        others back); the first ``max_records`` of their union are read. A single ``OR`` of the
        terms made SQLite collect and sort every pending record of every topic before the LIMIT:
        ~27 ms a poll behind a backlog of 100,000 records (a backfill), against ~2 ms this way.
        """
        if not self._topics:
            return []
        arms = " UNION ALL ".join(_FETCH_ARM for _ in self._topics)
        args: list[object] = []
        for topic in self._topics:
            args.extend((topic, self._positions[topic], max_records))
        rows = self._conn.execute(
            f"SELECT r.seq, r.topic, r.key, r.value, r.headers, r.ts FROM ({arms} ORDER BY seq LIMIT ?) s "  # noqa: S608
            "JOIN records r ON r.seq = s.seq ORDER BY r.seq", (*args, max_records)).fetchall()
        out = [_record(row) for row in rows]
        for rec in out:
            self._positions[rec.topic] = rec.offset
        return out

    def lag(self) -> int:
        """Records of this consumer's topics after its committed positions (0 = caught up)."""
        committed = dict(self._committed)  # may be called from another thread: its own connection
        conn = _connect(self._log.path)
        try:
            return sum(int(conn.execute("SELECT count(*) FROM records WHERE topic = ? AND seq > ?",
                                        (topic, committed.get(topic, 0))).fetchone()[0])
                       for topic in self._topics)
        finally:
            conn.close()

    def commit(self) -> None:
        changed = [(t, s) for t, s in self._positions.items() if self._committed.get(t) != s]
        if not changed:
            return
        # one autocommit statement: the write lock is held inside one call into SQLite only
        # (see _insert_records); the busy timeout of this connection waits for the lock
        self._conn.execute(
            "INSERT INTO offsets(grp, topic, seq) VALUES " + ",".join(["(?,?,?)"] * len(changed))  # noqa: S608
            + " ON CONFLICT(grp, topic) DO UPDATE SET seq=excluded.seq",
            [value for t, s in changed for value in (self._group, t, s)])
        self._committed.update(changed)

    def close(self) -> None:
        self._conn.close()

"""The embedded log's write path (gateway/eventlog/embedded.py): how its transactions hold SQLite's lock.

The MLLP listener (another process) appends each accepted message to the same file as the gateway's
workers; every moment a worker's transaction holds the write lock is added to an ACK's latency. A
write is therefore ONE call into SQLite (the lock taken, rows written, committed) — never
``BEGIN`` / ``INSERT`` / ``COMMIT`` as separate calls with Python (and its GIL) between them."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway.eventlog.base import OutRecord
from gateway.eventlog.embedded import _ONE_STATEMENT_ROWS, EmbeddedLog


def _statements(conn: sqlite3.Connection, run: Callable[[], object]) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        run()
    finally:
        conn.set_trace_callback(None)
    return seen


def test_an_append_and_an_offset_commit_are_each_one_statement(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite")
    try:
        records = [OutRecord("t.a", b"v%d" % i, key=b"k") for i in range(40)]
        sent = _statements(log._conn, lambda: log.append_many(records))
        assert len(sent) == 1, sent
        assert sent[0].startswith("INSERT INTO records")
        consumer = log.consumer("g", ["t.a", "t.b"])
        log.append(OutRecord("t.b", b"b0"))
        assert len(consumer.poll(timeout_s=2, max_records=100)) == 41
        committed = _statements(consumer._conn, consumer.commit)
        assert len(committed) == 1, committed
        assert committed[0].startswith("INSERT INTO offsets")
        consumer.close()
        again = log.consumer("g", ["t.a", "t.b"])  # both topics' positions were committed
        log.append(OutRecord("t.a", b"after"))
        assert [r.value for r in again.poll(timeout_s=2)] == [b"after"]
        again.close()
    finally:
        log.close()


def test_a_batch_over_one_statement_is_still_one_transaction_in_order(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite")
    try:
        big = [OutRecord("t", b"%d" % i, key=b"k%d" % (i % 7)) for i in range(_ONE_STATEMENT_ROWS + 5)]
        sent = _statements(log._conn, lambda: log.append_many(big))
        assert sent[0] == "BEGIN IMMEDIATE"
        assert sent[-1] == "COMMIT"
        log.append_many([OutRecord("t", b"tail")])
        values = [r.value for r in log.read_all("t")]
        assert values == [b"%d" % i for i in range(_ONE_STATEMENT_ROWS + 5)] + [b"tail"]
    finally:
        log.close()


def test_an_append_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = EmbeddedLog(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        done = threading.Event()

        def append() -> None:
            log.append(OutRecord("t", b"x"))
            done.set()

        threading.Thread(target=append, daemon=True).start()
        time.sleep(0.2)
        assert not done.is_set()  # the lock is another connection's: nothing written yet
        other.execute("COMMIT")
        assert done.wait(10)
        assert [r.value for r in log.read_all("t")] == [b"x"]
    finally:
        other.close()
        log.close()


def test_an_unsynced_append_is_not_flushed_unless_grouped_with_a_synced_one(tmp_path: Path) -> None:
    """``sync=False`` (the mapping worker's derived records) commits without the flush; a synced append
    (an ACK's raw message) is flushed, and the connection goes back to flushing for it."""
    log = EmbeddedLog(tmp_path / "log.sqlite")
    try:
        sent = _statements(log._conn, lambda: log.append_many([OutRecord("fhir", b"d")], sync=False))
        assert sent[0] == "PRAGMA synchronous=NORMAL"
        assert sent[1].startswith("INSERT INTO records")
        again = _statements(log._conn, lambda: log.append_many([OutRecord("fhir", b"e")], sync=False))
        assert len(again) == 1  # still NORMAL: no pragma again
        durable = _statements(log._conn, lambda: log.append(OutRecord("in", b"raw")))
        assert durable[0] == "PRAGMA synchronous=FULL"
        assert int(log._conn.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        assert [r.value for r in log.read_all("fhir")] == [b"d", b"e"]
    finally:
        log.close()

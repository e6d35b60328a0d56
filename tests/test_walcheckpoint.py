"""WAL checkpoints of the intake's files run in the background, never inside a writer's commit.

What a checkpoint did is seen from the main database file alone (copied without its ``-wal``): it
holds only the rows that were checkpointed into it.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from gateway.eventlog import walcheckpoint
from gateway.eventlog.base import OutRecord
from gateway.eventlog.embedded import EmbeddedLog
from gateway.eventlog.state.dedupe import open_dedupe


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (v BLOB)")
    return conn


def _rows_in_main_file(path: Path, tmp: Path, table: str = "t") -> int:
    """Rows of ``table`` in the database file without its WAL (what checkpoints have copied there)."""
    copy = tmp / f"copy-{time.monotonic_ns()}.sqlite"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # the table itself not checkpointed yet
        return 0
    finally:
        conn.close()


def _has_rows(path: Path, tmp: Path, table: str, n: int) -> bool:
    return _rows_in_main_file(path, tmp, table) == n


def _write(conn: sqlite3.Connection, n: int) -> None:
    for _ in range(n):  # one commit each, like ACKs; 4 KB rows: 2,000 of them cross 1,000 WAL pages
        conn.execute("INSERT INTO t(v) VALUES (?)", (b"x" * 4000,))


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walcheckpoint, "EVERY_S", 0.05)


def _wait(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_watched_writer_never_checkpoints_in_its_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, watched = tmp_path / "plain.sqlite", tmp_path / "watched.sqlite"
    a, b = _open(plain), _open(watched)
    monkeypatch.setattr(walcheckpoint, "checkpoint", lambda path: None)  # the background pass does nothing here
    try:
        walcheckpoint.watch(b, watched)
        _write(a, 2_000)
        _write(b, 2_000)
        # SQLite's own autocheckpoint ran inside some of the plain writer's commits...
        assert _rows_in_main_file(plain, tmp_path) > 0
        # ...and never inside the watched writer's
        assert _rows_in_main_file(watched, tmp_path) == 0
        assert b.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    finally:
        walcheckpoint.unwatch(watched)
        a.close()
        b.close()


def test_the_background_thread_checkpoints_watched_files_until_unwatched(tmp_path: Path, fast: None) -> None:
    path = tmp_path / "w.sqlite"
    conn = _open(path)
    walcheckpoint.watch(conn, path)
    _write(conn, 50)
    assert _wait(lambda: _rows_in_main_file(path, tmp_path) == 50)
    walcheckpoint.unwatch(path)
    time.sleep(0.3)  # the last pass of the thread that may have listed it
    _write(conn, 10)
    time.sleep(0.3)
    assert _rows_in_main_file(path, tmp_path) == 50  # no longer checkpointed
    conn.close()  # closing the last connection checkpoints it
    assert _rows_in_main_file(path, tmp_path) == 60


def test_a_file_removed_meanwhile_is_not_created_again(tmp_path: Path) -> None:
    gone = tmp_path / "gone.sqlite"
    walcheckpoint.checkpoint(gone)  # logged, not raised
    assert not gone.exists()


def test_the_intake_files_are_watched_and_checkpointed(tmp_path: Path, fast: None) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite")
    dedupe = open_dedupe("", tmp_path)
    try:
        for i in range(20):
            log.append(OutRecord(topic="hl7v2.in", value=b"MSH|x", key=b"k", headers={}))
            dedupe.add("APP|FAC", f"C{i}")
        for path, table in ((tmp_path / "log.sqlite", "records"), (tmp_path / "state.sqlite", "accepted")):
            assert _wait(partial(_has_rows, path, tmp_path, table, 20)), path.name
    finally:
        log.close()
        dedupe.close()


def test_a_wal_under_steady_writes_is_started_again_and_cut_back(tmp_path: Path, fast: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that never pause (the identity index at 80 msg/s) leave no moment when every frame is
    checkpointed before the next write begins: the WAL then never starts again from its beginning and
    grew without end (~10 MB a second in `pivot serve`). Past RESTART_BYTES it is restarted and cut back."""
    limit = 256 * 1024
    monkeypatch.setattr(walcheckpoint, "RESTART_BYTES", limit)
    path = tmp_path / "steady.sqlite"
    conn = _open(path)
    walcheckpoint.watch(conn, path)
    wal = path.with_name(path.name + "-wal")
    largest = 0
    try:
        for _ in range(2_500):  # ~10 MB of frames, one commit each, a little apart like ACKs
            conn.execute("INSERT INTO t(v) VALUES (?)", (b"x" * 4000,))
            time.sleep(0.0005)
            largest = max(largest, wal.stat().st_size)
    finally:
        walcheckpoint.unwatch(path)
        conn.close()
    assert largest < 8 * limit + 2 * 1024 * 1024  # bounded: not the ~10 MB written


def test_a_bulk_run_checkpoints_once_a_second_and_restores_the_period(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`pivot serve` checkpoints every 0.2 s (a checkpoint's fsync delays the ACKs' own: smaller ones
    delay them less); `pivot ingest`, which nobody waits on message by message, once a second, and only
    while it runs (it may run inside the tests' process)."""
    from gateway import cli
    from gateway.settings import load_settings

    assert walcheckpoint.EVERY_S < walcheckpoint.BULK_EVERY_S
    seen: list[float] = []
    monkeypatch.setattr("connectors.files.ingest_files",
                        lambda *a, **k: seen.append(walcheckpoint.EVERY_S) or _Summary())
    before = walcheckpoint.EVERY_S
    args = cli._parser().parse_args(["ingest", "--no-progress", "--jobs", "1", str(tmp_path / "none.hl7")])
    assert cli._ingest(load_settings(data_dir=tmp_path / "var"), args) == 0
    assert seen == [walcheckpoint.BULK_EVERY_S]
    assert before == walcheckpoint.EVERY_S
    with pytest.raises(RuntimeError), walcheckpoint.bulk():
        raise RuntimeError
    assert before == walcheckpoint.EVERY_S


class _Summary:
    refused = 0

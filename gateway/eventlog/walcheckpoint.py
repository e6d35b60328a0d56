"""WAL checkpoints of the intake's SQLite files, done by one background thread.

SQLite checkpoints a WAL database (copies the WAL into the database file and fsyncs it) inside
whichever commit pushes the WAL over 1,000 pages. On the intake's files (the event log, the
duplicate index, the identity index, the mapping hand-off) that commit is an ACK's: measured here,
one message in ~100 waited 5–10 ms more for it (serial intake p99 9.7 ms with autocheckpoints,
4.5 ms without). A file registered with :func:`watch` has its autocheckpoint turned off on the
writer's connection and is checkpointed every :data:`EVERY_S` by one thread per process, PASSIVE (it
never waits for, nor blocks, a writer or a reader). Durability is unchanged: the WAL is the commit.

Why every 0.2 s and not every second: a checkpoint ends with an fsync of the database file, and
every page it copied is flushed then. Once a second, the identity index's checkpoint (the mapping
worker writes it at 200 msg/s) copied ~1 s of page changes and took 50–90 ms; an ACK's own small
fsync on the event log, queued behind it on the disk, waited as long (measured in the MLLP
listener at 200 msg/s, enhanced mode: the slowest ACKs, 45–75 ms, each overlapped such a
checkpoint). Five smaller checkpoints a second took 11–34 ms each, and the CA p99 (after the first
second) went from 30.7–49.2 ms in six runs to 16.7–20.8 ms in ten. A bulk run (``pivot ingest``),
whose appends nobody waits on one by one, keeps one pass a second (:func:`bulk`): the more often a
hot page is checkpointed, the more often it is written.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

EVERY_S = 0.2
BULK_EVERY_S = 1.0
RESTART_BYTES = 64 * 1024 * 1024
log = logging.getLogger("pivot.sqlite")

_lock = threading.Lock()
_watched: dict[Path, int] = {}
_thread: threading.Thread | None = None


def watch(conn: sqlite3.Connection, path: Path) -> None:
    """Checkpoint ``path`` in the background from now on; ``conn`` (its writer) no longer does."""
    global _thread
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={RESTART_BYTES}")  # a WAL started again is cut back to this
    with _lock:
        _watched[path] = _watched.get(path, 0) + 1
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="sqlite-checkpoint", daemon=True)
            _thread.start()


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Inside, this process checkpoints once a second (:data:`BULK_EVERY_S`): a bulk run. The period is
    restored at the end (``pivot ingest`` may run inside a longer-lived process: the tests)."""
    global EVERY_S
    before, EVERY_S = EVERY_S, BULK_EVERY_S
    try:
        yield
    finally:
        EVERY_S = before


def unwatch(path: Path) -> None:
    """Stop checkpointing ``path`` once every writer that watched it is gone (closing the last
    connection checkpoints the file anyway)."""
    with _lock:
        left = _watched.get(path, 0) - 1
        if left > 0:
            _watched[path] = left
        else:
            _watched.pop(path, None)


def checkpoint(path: Path) -> None:
    """One PASSIVE checkpoint of ``path``, then a RESTART one when its WAL has grown past
    :data:`RESTART_BYTES` (errors are logged, never raised: the next one retries).

    A WAL starts again from its beginning only when a write transaction begins while every frame is
    checkpointed: under a steady stream of transactions (the identity index and the handoff at
    80 msg/s) that moment never came, and their WALs grew ~10 MB a second without end, each append
    allocating new blocks (which the file system then flushes with every other file's fsync — the
    ACK's). RESTART, tried without waiting (busy: the next pass tries again), makes the next
    writer start at the beginning; the writers' ``journal_size_limit`` then cuts the file back."""
    try:
        # mode=rw: a file removed meanwhile (a test's directory) is not created again, empty
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=0, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if _wal_bytes(path) > RESTART_BYTES:
                conn.execute("PRAGMA wal_checkpoint(RESTART)")
        finally:
            conn.close()
    except sqlite3.Error:
        log.debug("checkpoint skipped file=%s", path.name, exc_info=True)


def _loop() -> None:
    while True:
        time.sleep(EVERY_S)
        with _lock:
            paths = list(_watched)
        for path in paths:
            checkpoint(path)


def _wal_bytes(path: Path) -> int:
    try:
        return path.with_name(path.name + "-wal").stat().st_size
    except OSError:
        return 0

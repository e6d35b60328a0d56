"""The intake's mapping results handed to the mapping worker across processes (``handoff.sqlite``).

The intake maps and resolves each message before acknowledging it; the mapping worker must publish
exactly that result and never resolve the same message a second time (gateway.intake). In one
process a small in-memory cache (``MapCache``) carries it. When the MLLP listener runs in a process
of its own (gateway.listener), the result goes through this SQLite table instead: written before
the raw message is appended to ``hl7v2.in`` (so it is there when the worker reads the record),
taken (read and deleted) by the worker. A result that is never taken (an append that failed, a
crash between the two) is removed after a day. The file is 0600 under PIVOT_DATA_DIR: it holds
mapped resources, like the FHIR store beside it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import fields
from pathlib import Path

from gateway import walcheckpoint
from gateway.eventlog.embedded import secure_file
from gateway.intake import MapCache
from mappings import MapResult

FILE_NAME = "handoff.sqlite"
_KEEP_S = 86_400
_PRUNE_EVERY = 1_000


class SharedMapCache(MapCache):
    """``MapCache`` kept in SQLite, shared by the processes of one gateway (see module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        path = data_dir / FILE_NAME
        secure_file(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a process crash loses nothing; the worker re-resolves
        self._db.execute("PRAGMA busy_timeout=30000")
        self._path = path
        walcheckpoint.watch(self._db, path)
        self._db.execute("CREATE TABLE IF NOT EXISTS handoff (key TEXT PRIMARY KEY, body TEXT NOT NULL, "
                         "at INTEGER NOT NULL)")
        self._db_lock = threading.Lock()
        self._puts = 0

    def put(self, key: str, result: MapResult) -> None:
        shallow = {f.name: getattr(result, f.name) for f in fields(result)}  # asdict() deep-copies: 2 ms
        body = json.dumps(shallow, ensure_ascii=False, separators=(",", ":"))
        now = int(time.time())
        with self._db_lock:
            self._db.execute("INSERT OR REPLACE INTO handoff(key, body, at) VALUES (?,?,?)", (key, body, now))
            self._puts += 1
            if self._puts % _PRUNE_EVERY == 0:
                self._db.execute("DELETE FROM handoff WHERE at < ?", (now - _KEEP_S,))

    def pop(self, key: str) -> MapResult | None:
        with self._db_lock:
            row = self._db.execute("DELETE FROM handoff WHERE key = ? RETURNING body", (key,)).fetchone()
        return MapResult(**json.loads(row[0])) if row is not None else None

    def close(self) -> None:
        with self._db_lock:
            walcheckpoint.unwatch(self._path)
            self._db.close()

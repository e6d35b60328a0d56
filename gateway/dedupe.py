"""Index of accepted messages (sending application|facility + MSH-10) for duplicate detection.

A resend of an accepted message is ACKed again and changes nothing. The index lives in
``PIVOT_DATA_DIR/state.sqlite``. Across several gateway instances (Kafka mode) each instance keeps
its own index; a resend reaching another instance is still harmless downstream because mapping is
deterministic and the FHIR store does not version identical content.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from gateway import walcheckpoint
from gateway.eventlog.embedded import secure_file


class DedupeIndex:
    def __init__(self, path: Path) -> None:
        secure_file(path)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._path = path
        walcheckpoint.watch(self._conn, path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS accepted (sender TEXT NOT NULL, control_id TEXT NOT NULL, "
            "at INTEGER NOT NULL, PRIMARY KEY (sender, control_id))")
        self._lock = threading.Lock()

    def seen(self, sender: str, control_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM accepted WHERE sender=? AND control_id=?",
                                     (sender, control_id)).fetchone()
        return row is not None

    def add(self, sender: str, control_id: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO accepted(sender, control_id, at) VALUES (?,?,?)",
                               (sender, control_id, int(time.time())))

    def forget(self, sender: str, control_id: str) -> None:
        """Drop an entry (a dead letter replayed after its AA must be processed again)."""
        with self._lock:
            self._conn.execute("DELETE FROM accepted WHERE sender=? AND control_id=?", (sender, control_id))

    def close(self) -> None:
        with self._lock:
            walcheckpoint.unwatch(self._path)
            self._conn.close()

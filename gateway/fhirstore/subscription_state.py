"""Delivery state of every subscription (gateway/subscriptions): event numbers, what was acknowledged,
failures (SQLite, beside the FHIR store: the SQL lives in the store package).

``subscriptions.sqlite`` beside the FHIR store (mode 0600, WAL), two tables:

- ``subs``: per subscription, the last event number given (``events-since-subscription-start``),
  the last number the endpoint acknowledged (2xx), consecutive failures and the last error text;
- ``events``: per subscription and event number, the focus as ``Type/id/_history/version``, the
  interaction (POST/PUT/DELETE) and the time. Only references: the resources themselves stay in
  the FHIR store (read by version when a notification or ``$events`` needs them).

Events not yet acknowledged are the subscription's queue; acknowledged ones are kept (the newest
``keep`` per subscription) so a subscriber can ask ``$events`` for what it missed. Event numbers
start at 1 and only grow, across restarts and Subscription updates; deleting the Subscription
forgets its state.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.eventlog.embedded import private_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subs (id TEXT PRIMARY KEY, started_ms INTEGER NOT NULL,
  last_number INTEGER NOT NULL DEFAULT 0, acked INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS events (sub TEXT NOT NULL, number INTEGER NOT NULL, at_ms INTEGER NOT NULL,
  rtype TEXT NOT NULL, rid TEXT NOT NULL, version INTEGER NOT NULL, method TEXT NOT NULL,
  PRIMARY KEY (sub, number));
"""
_PRUNE_EVERY = 100


@dataclass(frozen=True, slots=True)
class Event:
    """One numbered event of one subscription."""

    number: int
    at_ms: int
    rtype: str
    rid: str
    version: int
    method: str  # POST (create), PUT (update), DELETE


@dataclass(frozen=True, slots=True)
class Counters:
    started_ms: int
    last_number: int
    acked: int
    failures: int
    last_error: str


class DeliveryState:
    """Thread-safe access to ``subscriptions.sqlite``."""

    def __init__(self, path: Path, keep: int = 10_000) -> None:
        private_dir(path.parent)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self.keep = keep
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def ensure(self, sub: str, now_ms: int) -> Counters:
        """The counters of ``sub``, created (all zero) when it has none."""
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO subs(id, started_ms) VALUES (?, ?)", (sub, now_ms))
            return self._counters(sub)

    def counters(self, sub: str) -> Counters | None:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM subs WHERE id = ?", (sub,)).fetchone()
            return None if row is None else self._counters(sub)

    def _counters(self, sub: str) -> Counters:
        row = self._conn.execute("SELECT started_ms, last_number, acked, failures, last_error FROM subs WHERE id = ?",
                                 (sub,)).fetchone()
        return Counters(int(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]))

    def known(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._conn.execute("SELECT id FROM subs")]

    def forget(self, sub: str) -> None:
        """Drop everything about ``sub`` (its Subscription was deleted)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM events WHERE sub = ?", (sub,))
            self._conn.execute("DELETE FROM subs WHERE id = ?", (sub,))
            self._conn.execute("COMMIT")

    def record(self, sub: str, at_ms: int, rtype: str, rid: str, version: int, method: str) -> int:
        """Give the next event number of ``sub`` to this event and queue it; returns the number."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT OR IGNORE INTO subs(id, started_ms) VALUES (?, ?)", (sub, at_ms))
                self._conn.execute("UPDATE subs SET last_number = last_number + 1 WHERE id = ?", (sub,))
                number = int(self._conn.execute("SELECT last_number FROM subs WHERE id = ?", (sub,)).fetchone()[0])
                self._conn.execute("INSERT INTO events(sub, number, at_ms, rtype, rid, version, method) "
                                   "VALUES (?,?,?,?,?,?,?)", (sub, number, at_ms, rtype, rid, version, method))
                if number % _PRUNE_EVERY == 0:
                    self._conn.execute("DELETE FROM events WHERE sub = ? AND number <= "
                                       "min((SELECT acked FROM subs WHERE id = ?), ?)", (sub, sub, number - self.keep))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return number

    def pending(self, sub: str, limit: int) -> list[Event]:
        """The oldest events not yet acknowledged (at most ``limit``)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT number, at_ms, rtype, rid, version, method FROM events WHERE sub = ? AND number > "
                "(SELECT acked FROM subs WHERE id = ?) ORDER BY number LIMIT ?", (sub, sub, limit)).fetchall()
        return [Event(*row) for row in rows]

    def events(self, sub: str, since: int, until: int, limit: int) -> list[Event]:
        """Kept events numbered ``since``..``until`` (inclusive), oldest first, at most ``limit``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT number, at_ms, rtype, rid, version, method FROM events WHERE sub = ? AND number >= ? "
                "AND number <= ? ORDER BY number LIMIT ?", (sub, since, until, limit)).fetchall()
        return [Event(*row) for row in rows]

    def ack(self, sub: str, number: int) -> None:
        """The endpoint accepted every event up to ``number``; failures reset."""
        with self._lock:
            self._conn.execute("UPDATE subs SET acked = max(acked, ?), failures = 0, last_error = '' WHERE id = ?",
                               (number, sub))

    def succeeded(self, sub: str) -> None:
        """A notification without events (handshake, heartbeat) went through."""
        with self._lock:
            self._conn.execute("UPDATE subs SET failures = 0, last_error = '' WHERE id = ?", (sub,))

    def failed(self, sub: str, error: str) -> int:
        """One more consecutive failure with ``error`` (no health data); returns the count."""
        with self._lock:
            self._conn.execute("UPDATE subs SET failures = failures + 1, last_error = ? WHERE id = ?", (error, sub))
            row = self._conn.execute("SELECT failures FROM subs WHERE id = ?", (sub,)).fetchone()
        return 0 if row is None else int(row[0])

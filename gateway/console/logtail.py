"""Bounded reads of the event log for the feed-health page: headers of recent records, never bodies.

``EventLog.read_all`` reads a whole topic with every raw message; the feed-health page needs only
the headers of the last day. On the embedded log (SQLite) this module reads the newest records
first through the ``(topic, seq)`` index and stops at the window's start or at ``limit`` records,
taking the headers, the append time and at most ``head_bytes`` of the value (the MSH segment of
a quarantined message). On Kafka it falls back to ``read_all`` and keeps the tail (bounded in
memory, not in reading time: a Kafka ``offsets_for_times`` read belongs in the EventLog interface).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.eventlog.base import EventLog
from gateway.eventlog.embedded import EmbeddedLog


@dataclass(frozen=True, slots=True)
class Tail:
    """One record's id (``partition:offset``, as the dead-letter list names it), headers, append
    time in ms and the first bytes of its value."""

    id: str
    headers: dict[str, str]
    ts_ms: int
    head: bytes


@dataclass(frozen=True, slots=True)
class Window:
    records: list[Tail]  # newest first
    truncated: bool  # ``limit`` was reached before the window's start


def _embedded_path(log: EventLog) -> Path | None:
    return log.path if isinstance(log, EmbeddedLog) else None


def _connect(path: Path) -> sqlite3.Connection:
    """A connection of our own (readers never wait on the log's writer in WAL mode), read-only."""
    conn = sqlite3.connect(path, timeout=10)
    conn.execute("PRAGMA query_only=1")
    return conn


def recent(log: EventLog, topic: str, since_ms: int, *, limit: int = 100_000, head_bytes: int = 0,
           where_stage: str = "") -> Window:
    """Records of ``topic`` appended at or after ``since_ms`` (newest first, at most ``limit``);
    ``where_stage``: only dead letters of that stage (then ``since_ms`` may be 0: any age)."""
    path = _embedded_path(log)
    if path is None:
        return _generic(log, topic, since_ms, limit, head_bytes, where_stage)
    sql = "SELECT seq, headers, ts, substr(value, 1, ?) FROM records WHERE topic = ?"
    args: list[object] = [head_bytes, topic]
    if where_stage:
        sql += " AND json_extract(headers, '$.stage') = ?"
        args.append(where_stage)
    sql += " ORDER BY seq DESC"
    out: list[Tail] = []
    conn = _connect(path)
    try:
        for seq, headers, ts, head in conn.execute(sql, args):
            if int(ts) < since_ms:
                return Window(out, False)
            if len(out) >= limit:
                return Window(out, True)
            out.append(Tail(f"0:{seq}", json.loads(headers), int(ts), bytes(head or b"")))
    finally:
        conn.close()
    return Window(out, False)


def _generic(log: EventLog, topic: str, since_ms: int, limit: int, head_bytes: int, where_stage: str) -> Window:
    records = [r for r in log.read_all(topic) if r.timestamp_ms >= since_ms
               and (not where_stage or r.headers.get("stage") == where_stage)]
    records.reverse()
    return Window([Tail(f"{r.partition}:{r.offset}", dict(r.headers), r.timestamp_ms, r.value[:head_bytes])
                   for r in records[:limit]], len(records) > limit)


class LastSeen:
    """Per sender, the append time (ms) of its latest record in a topic, kept up to date
    incrementally: the first call reads the topic once (headers' sender only, grouped in SQLite),
    later calls read only what was appended since. This is what says how long a feed silent for
    days has been silent, without reading days of records on every page load."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: dict[str, int] = {}
        self._seen: dict[str, dict[str, int]] = {}

    def get(self, log: EventLog, topic: str) -> dict[str, int]:
        with self._lock:
            seen = self._seen.setdefault(topic, {})
            path = _embedded_path(log)
            if path is None:  # the generic path: the whole topic again (see the module docstring)
                for r in log.read_all(topic):
                    sender = r.headers.get("sender", "")
                    seen[sender] = max(seen.get(sender, 0), r.timestamp_ms)
                return dict(seen)
            conn = _connect(path)
            try:
                rows = conn.execute("SELECT json_extract(headers, '$.sender'), max(ts), max(seq) FROM records "
                                    "WHERE topic = ? AND seq > ? GROUP BY 1",
                                    (topic, self._cursor.get(topic, 0))).fetchall()
            finally:
                conn.close()
            for sender, ts, seq in rows:
                key = str(sender or "")
                seen[key] = max(seen.get(key, 0), int(ts))
                self._cursor[topic] = max(self._cursor.get(topic, 0), int(seq))
            return dict(seen)


def last_seen(log: EventLog, topic: str) -> dict[str, int]:
    """One-off :class:`LastSeen` read (tests, tools)."""
    return LastSeen().get(log, topic)

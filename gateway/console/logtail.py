"""Bounded reads of the event log for the feed-health page: headers of recent records, never bodies.

``EventLog.read_all`` reads a whole topic with every raw message; the feed-health page needs only
the headers of the last day. On the embedded log (SQLite) it asks the log's file by name
(gateway/eventlog/tail.py): the newest records first through the ``(topic, seq)`` index, stopping
at the window's start or at ``limit`` records, taking the headers, the append time and at most
``head_bytes`` of the value (the MSH segment of a quarantined message). On Kafka it falls back to
``read_all`` and keeps the tail (bounded in memory, not in reading time: a Kafka
``offsets_for_times`` read belongs in the EventLog interface).
"""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.eventlog.base import EventLog
from gateway.eventlog.embedded import EmbeddedLog
from gateway.eventlog.tail import Tail, Window, recent_embedded, senders_after

__all__ = ["LastSeen", "Tail", "Window", "last_seen", "recent"]


def _embedded_path(log: EventLog) -> Path | None:
    return log.path if isinstance(log, EmbeddedLog) else None


def recent(log: EventLog, topic: str, since_ms: int, *, limit: int = 100_000, head_bytes: int = 0,
           where_stage: str = "") -> Window:
    """Records of ``topic`` appended at or after ``since_ms`` (newest first, at most ``limit``);
    ``where_stage``: only dead letters of that stage (then ``since_ms`` may be 0: any age)."""
    path = _embedded_path(log)
    if path is None:
        return _generic(log, topic, since_ms, limit, head_bytes, where_stage)
    return recent_embedded(path, topic, since_ms, limit=limit, head_bytes=head_bytes, where_stage=where_stage)


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
            for key, ts, seq in senders_after(path, topic, self._cursor.get(topic, 0)):
                seen[key] = max(seen.get(key, 0), ts)
                self._cursor[topic] = max(self._cursor.get(topic, 0), seq)
            return dict(seen)


def last_seen(log: EventLog, topic: str) -> dict[str, int]:
    """One-off :class:`LastSeen` read (tests, tools)."""
    return LastSeen().get(log, topic)

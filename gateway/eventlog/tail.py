"""Named read queries of the embedded log's file for the console: the newest records' headers, and
per sender the latest append (SQL stays in this package; the console's logtail.py calls these).

    recent_embedded(path, topic, since_ms, …)   newest first through the ``(topic, seq)`` index,
                                                stopping at the window's start or at ``limit``:
                                                headers, append time, the first ``head_bytes``
    senders_after(path, topic, after_seq)       (sender, latest ts, latest seq) of the records
                                                appended after ``after_seq``, grouped in SQLite

Each call opens a read-only connection of its own (WAL readers never wait on the log's writer)
and closes it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path


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


def _connect(path: Path) -> sqlite3.Connection:
    """A connection of our own (readers never wait on the log's writer in WAL mode), read-only."""
    conn = sqlite3.connect(path, timeout=10)
    conn.execute("PRAGMA query_only=1")
    return conn


def recent_embedded(path: Path, topic: str, since_ms: int, *, limit: int, head_bytes: int,
                    where_stage: str = "") -> Window:
    """Records of ``topic`` in the embedded log at ``path`` appended at or after ``since_ms``, newest
    first, at most ``limit``; ``where_stage``: only dead letters of that stage."""
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


def senders_after(path: Path, topic: str, after_seq: int) -> list[tuple[str, int, int]]:
    """Per sender (header ``sender``, "" when none) of the records of ``topic`` appended after
    ``after_seq``: ``(sender, latest append time ms, latest seq)``."""
    conn = _connect(path)
    try:
        rows = conn.execute("SELECT json_extract(headers, '$.sender'), max(ts), max(seq) FROM records "
                            "WHERE topic = ? AND seq > ? GROUP BY 1", (topic, after_seq)).fetchall()
    finally:
        conn.close()
    return [(str(sender or ""), int(ts), int(seq)) for sender, ts, seq in rows]

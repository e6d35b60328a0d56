"""The audit trail's file, ``audit.sqlite``: its schema and its named queries (the SQL of the trail).

``gateway/security/audit_trail.py`` (the writer thread, the outbox to the ``audit`` topic) and
``gateway/security/audit_search.py`` (FHIR search parameters → :class:`AuditTerm` conditions) call
these; neither holds SQL.

    AuditDb(path)                 the writer's connection (WAL, synchronous=FULL, created 0600)
      .insert(events)             one transaction: each AuditEvent and the Patients it names
      .unpublished(limit)         (seq, id, body) not yet on the topic, oldest first
      .mark_published(seqs)       after the event log stored them
    search(path, terms, …)        (total, bodies of one page, the next page's cursor) read-only

Tables: ``audit`` (one row per AuditEvent: id, recorded, the requesting client, subtype, outcome,
the JSON body, published flag) and ``audit_patient`` (seq → each Patient reference it names).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.errors import StoreError
from gateway.eventlog.embedded import secure_file

AuditDbError = sqlite3.Error
"""The database's own error (locked, disk full): catch this name, not sqlite3's."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, recorded TEXT NOT NULL,
  client TEXT NOT NULL, subtype TEXT NOT NULL, outcome TEXT NOT NULL, body TEXT NOT NULL,
  published INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS audit_recorded ON audit(recorded);
CREATE INDEX IF NOT EXISTS audit_unpublished ON audit(published, seq);
CREATE TABLE IF NOT EXISTS audit_patient (seq INTEGER NOT NULL, patient TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_patient_idx ON audit_patient(patient, seq);
"""

TermKind = Literal["patient", "entity", "agent", "client", "id", "outcome", "since", "date", "type", "subtype"]


@dataclass(frozen=True, slots=True)
class AuditTerm:
    """One condition of an audit search (conditions are AND-ed; ``values`` are OR-ed):

    patient  Patient references (``Patient/x``) the event names      entity  entity.what.reference
    agent    the requesting client's id, or any agent.who.reference   client  the requesting client
    id       the AuditEvent id                                        outcome outcome codes
    since    recorded at or after (ISO text)
    date     (prefix, first instant, last instant): prefix eq ne gt ge lt le over ``recorded``
    type / subtype  ``system|code`` or ``code`` (AuditEvent.type: one Coding; .subtype: a list)
    """

    kind: TermKind
    values: tuple[str, ...]


_MARKED: dict[str, tuple[str, int]] = {
    "patient": ("a.seq IN (SELECT seq FROM audit_patient WHERE patient IN ({marks}))", 1),
    "entity": ("EXISTS (SELECT 1 FROM json_each(a.body, '$.entity') e "
               "WHERE json_extract(e.value, '$.what.reference') IN ({marks}))", 1),
    "agent": ("(a.client IN ({marks}) OR EXISTS (SELECT 1 FROM json_each(a.body, '$.agent') g "
              "WHERE json_extract(g.value, '$.who.reference') IN ({marks})))", 2),
    "outcome": ("a.outcome IN ({marks})", 1),
}
_SINGLE = {"client": "a.client = ?", "id": "a.id = ?", "since": "a.recorded >= ?"}
_DATES = {"eq": ("a.recorded BETWEEN ? AND ?", (1, 2)), "ne": ("a.recorded NOT BETWEEN ? AND ?", (1, 2)),
          "gt": ("a.recorded > ?", (2,)), "ge": ("a.recorded >= ?", (1,)),
          "lt": ("a.recorded < ?", (1,)), "le": ("a.recorded <= ?", (2,))}


def _token(kind: str, values: tuple[str, ...]) -> tuple[str, list[Any]]:
    item = "a.body, '$.type'" if kind == "type" else "c.value"
    parts: list[str] = []
    args: list[Any] = []
    for value in values:
        system, _bar, code = value.rpartition("|")
        code_of, system_of = f"json_extract({item}, '$.code')", f"json_extract({item}, '$.system')"
        if kind == "type":
            code_of, system_of = "json_extract(a.body, '$.type.code')", "json_extract(a.body, '$.type.system')"
        parts.append(f"({code_of} = ?" + (f" AND {system_of} = ?)" if system else ")"))
        args.extend([code, system] if system else [code])
    either = " OR ".join(parts)
    if kind == "type":
        return f"({either})", args
    return f"EXISTS (SELECT 1 FROM json_each(a.body, '$.subtype') c WHERE {either})", args  # noqa: S608


def _condition(term: AuditTerm) -> tuple[str, list[Any]]:
    """The SQL condition of one term and its bound values (fixed fragments only)."""
    if term.kind in _MARKED:
        template, times = _MARKED[term.kind]
        return template.format(marks=",".join("?" * len(term.values))), list(term.values) * times
    if term.kind in _SINGLE:
        return _SINGLE[term.kind], [term.values[0]]
    if term.kind == "date":
        cond, picks = _DATES[term.values[0]]
        return cond, [term.values[i] for i in picks]
    return _token(term.kind, term.values)


def _where(terms: Sequence[AuditTerm]) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for term in terms:
        cond, values = _condition(term)
        where.append(cond)
        args.extend(values)
    return " AND ".join(where) or "1", args


def _open_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def search(path: Path, terms: Sequence[AuditTerm], *, count: int, before_seq: int | None = None,
           oldest_first: bool = False) -> tuple[int, list[dict[str, Any]], int | None]:
    """(total matching, one page of AuditEvents — newest first unless ``oldest_first`` — and the
    cursor of the next page or None); an unreadable file is a StoreError 503, a missing one empty."""
    if not path.exists():
        return 0, [], None
    where, args = _where(terms)
    conn = _open_readonly(path)
    try:
        total = int(conn.execute(f"SELECT count(*) FROM audit a WHERE {where}", args).fetchone()[0])  # noqa: S608 - only our fixed SQL fragments; values are bound
        page_where = where + (" AND a.seq < ?" if before_seq is not None else "")
        page_args = [*args, *([before_seq] if before_seq is not None else [])]
        order = "ASC" if oldest_first else "DESC"
        rows = conn.execute(f"SELECT a.seq, a.body FROM audit a WHERE {page_where} ORDER BY a.seq {order} LIMIT ?",  # noqa: S608
                            [*page_args, count + 1]).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"audit trail unreadable ({type(exc).__name__})", status=503, issue_code="transient") from None
    finally:
        conn.close()
    more = len(rows) > count
    rows = rows[:count]
    return total, [json.loads(body) for _seq, body in rows], (int(rows[-1][0]) if more and rows else None)


class AuditDb:
    """The trail's writer connection (one thread writes; see audit_trail.py)."""

    def __init__(self, path: Path) -> None:
        secure_file(path)
        old = os.umask(0o077)
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(_SCHEMA)
        finally:
            os.umask(old)
        self._conn = conn

    def insert(self, events: Sequence[tuple[dict[str, Any], Sequence[str]]]) -> None:
        """Each ``(AuditEvent, Patient references it names)`` in one transaction (all or nothing)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for event, patients in events:
                cur = conn.execute(
                    "INSERT INTO audit(id, recorded, client, subtype, outcome, body) VALUES (?,?,?,?,?,?)",
                    (event["id"], event["recorded"], event["agent"][0]["who"]["display"],
                     event["subtype"][0]["code"], event["outcome"], json.dumps(event, separators=(",", ":"))))
                conn.executemany("INSERT INTO audit_patient(seq, patient) VALUES (?, ?)",
                                 [(cur.lastrowid, p) for p in patients])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def unpublished(self, limit: int) -> list[tuple[int, str, str]]:
        """``(seq, id, body)`` of the AuditEvents not yet on the topic, oldest first."""
        rows = self._conn.execute("SELECT seq, id, body FROM audit WHERE published = 0 ORDER BY seq LIMIT ?",
                                  (limit,)).fetchall()
        return [(int(seq), str(rid), str(body)) for seq, rid, body in rows]

    def mark_published(self, seqs: Sequence[int]) -> None:
        self._conn.executemany("UPDATE audit SET published = 1 WHERE seq = ?", [(seq,) for seq in seqs])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

"""Searching the audit trail the FHIR way (IHE BALP / RESTful ATNA): ``GET /fhir/AuditEvent?…``.

The AuditEvents live in ``audit.sqlite`` (audit_trail.py: one row per event, its Patients in
``audit_patient``); this module turns search parameters into one SQL query over that table, so the
HTTP route and ``pivot audit`` read the same rows the same way (no second copy of the trail).

    patient=Patient/x,y        the access was about one of these Patients (audit_patient index)
    entity=Type/id             entity.what.reference
    agent=client-id|Type/id    the requesting client (its id), or any agent.who (a recipient)
    date=ge2026-12-01          recorded, with eq (default), ne, gt, ge, lt, le; repeat to AND
    type=[system|]code         AuditEvent.type (rest; DCM 110106 for disclosures)
    subtype=[system|]code      AuditEvent.subtype (read, search-type, operation, alert, notification…)
    outcome=0|4|8              success, 4xx, 5xx
    _count=50 (≤ 1000)         page size; newest first; the next link carries ``_page``

Parameters repeat for AND and take commas for OR (FHIR). An unknown parameter, a modifier or a
malformed value is a 400 naming the parameter (a mistyped filter must not list the whole trail).
The parameter table is the CapabilityStatement's (gateway.fhirstore.capability.OTHER_SEARCH_PARAMS).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.fhirstore.capability import OTHER_SEARCH_PARAMS
from gateway.fhirstore.dates import date_range, instant_text

DEFAULT_COUNT = 50
MAX_COUNT = 1000
KNOWN = frozenset(name for name, _type, _doc in OTHER_SEARCH_PARAMS["AuditEvent"]) | {"_page", "_format"}
_PREFIX = re.compile(r"(eq|ne|gt|ge|lt|le)?(.+)")
_PAGE = re.compile(r"s(\d{1,18})")
_ENTITY_REFS = ("EXISTS (SELECT 1 FROM json_each(a.body, '$.entity') e "
                "WHERE json_extract(e.value, '$.what.reference') IN ({marks}))")
_AGENTS = ("(a.client IN ({marks}) OR EXISTS (SELECT 1 FROM json_each(a.body, '$.agent') g "
           "WHERE json_extract(g.value, '$.who.reference') IN ({marks})))")


def bad(message: str) -> StoreError:
    return StoreError(message, status=400, issue_code="invalid")


@dataclass(slots=True)
class AuditQuery:
    """The SQL conditions of one search, its page size and position."""

    where: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    before_seq: int | None = None  # the page cursor: events older than this row
    oldest_first: bool = False  # ``pivot audit`` prints the trail in order

    def only_agent(self, client_id: str) -> None:
        """Restrict to the accesses this client made (an organisation-bound caller's own trail)."""
        self.where.append("a.client = ?")
        self.args.append(client_id)


def _values(name: str, text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if not text or any(not v for v in values):
        raise bad(f"parameter {name}: empty value")
    return values


def _in(template: str, values: list[str], query: AuditQuery, times: int = 1) -> None:
    marks = ",".join("?" * len(values))
    query.where.append(template.format(marks=marks))
    query.args.extend(values * times)


def _patient(value: str) -> str:
    ref = value if value.startswith("Patient/") else f"Patient/{value}"
    if ref.count("/") != 1 or not ref.split("/", 1)[1]:
        raise bad("parameter patient: a Patient id or Patient/id")
    return ref


def _token(name: str, values: list[str], query: AuditQuery) -> None:
    """``system|code`` or ``code`` against AuditEvent.type (one Coding) or .subtype (a list)."""
    item = "a.body, '$.type'" if name == "type" else "c.value"
    parts: list[str] = []
    for value in values:
        system, bar, code = value.rpartition("|")
        if not code or (bar and not system):
            raise bad(f"parameter {name}: a code or system|code")
        code_of, system_of = f"json_extract({item}, '$.code')", f"json_extract({item}, '$.system')"
        if name == "type":
            code_of, system_of = "json_extract(a.body, '$.type.code')", "json_extract(a.body, '$.type.system')"
        parts.append(f"({code_of} = ?" + (f" AND {system_of} = ?)" if system else ")"))
        query.args.extend([code, system] if system else [code])
    either = " OR ".join(parts)
    query.where.append(f"({either})" if name == "type"
                       else f"EXISTS (SELECT 1 FROM json_each(a.body, '$.subtype') c WHERE {either})")  # noqa: S608


def _date(value: str, query: AuditQuery) -> None:
    match = _PREFIX.fullmatch(value)
    assert match is not None
    prefix, text = match.group(1) or "eq", match.group(2)
    try:
        lo, hi = date_range(text)
    except ValueError:
        raise bad("parameter date: not a FHIR date, dateTime or instant") from None
    first, last = instant_text(lo), instant_text(hi)
    conds = {"eq": ("a.recorded BETWEEN ? AND ?", [first, last]),
             "ne": ("a.recorded NOT BETWEEN ? AND ?", [first, last]),
             "gt": ("a.recorded > ?", [last]), "ge": ("a.recorded >= ?", [first]),
             "lt": ("a.recorded < ?", [first]), "le": ("a.recorded <= ?", [last])}
    cond, args = conds[prefix]
    query.where.append(cond)
    query.args.extend(args)


def parse_query(params: list[tuple[str, str]]) -> AuditQuery:
    """Search parameters (as repeated in the query string) → the query; 400 on anything unknown."""
    query = AuditQuery()
    for name, text in params:
        if ":" in name:
            raise bad(f"parameter {name}: modifiers are not supported on AuditEvent")
        if name not in KNOWN:
            raise bad(f"parameter {name}: unknown on AuditEvent (known: {', '.join(sorted(KNOWN - {'_format'}))})")
        if name == "_format":
            continue
        if name == "_count":
            if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
                raise bad(f"parameter _count: an integer between 1 and {MAX_COUNT}")
            query.count = int(text)
        elif name == "_page":
            page = _PAGE.fullmatch(text)
            if page is None:
                raise bad("parameter _page: use the next link as given")
            query.before_seq = int(page.group(1))
        elif name == "patient":
            _in("a.seq IN (SELECT seq FROM audit_patient WHERE patient IN ({marks}))",
                [_patient(v) for v in _values(name, text)], query)
        elif name == "entity":
            _in(_ENTITY_REFS, _values(name, text), query)
        elif name == "agent":
            _in(_AGENTS, _values(name, text), query, times=2)
        elif name == "date":
            _date(text, query)
        elif name in ("type", "subtype"):
            _token(name, _values(name, text), query)
        elif name == "outcome":
            values = _values(name, text)
            if not set(values) <= {"0", "4", "8", "12"}:
                raise bad("parameter outcome: 0, 4, 8 or 12")
            _in("a.outcome IN ({marks})", values, query)
    return query


def search_audit(path: Path, query: AuditQuery) -> tuple[int, list[dict[str, Any]], int | None]:
    """(total matching, this page's AuditEvents newest first, the cursor of the next page or None)."""
    from gateway.security.audit_trail import open_audit_db  # the trail's own reader

    if not path.exists():
        return 0, [], None
    where = " AND ".join(query.where) or "1"
    conn = open_audit_db(path, readonly=True)
    try:
        total = int(conn.execute(f"SELECT count(*) FROM audit a WHERE {where}", query.args).fetchone()[0])  # noqa: S608 - only our fixed SQL fragments; values are bound
        page_where = where + (" AND a.seq < ?" if query.before_seq is not None else "")
        page_args = [*query.args, *([query.before_seq] if query.before_seq is not None else [])]
        order = "ASC" if query.oldest_first else "DESC"
        rows = conn.execute(f"SELECT a.seq, a.body FROM audit a WHERE {page_where} ORDER BY a.seq {order} LIMIT ?",  # noqa: S608
                            [*page_args, query.count + 1]).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"audit trail unreadable ({type(exc).__name__})", status=503, issue_code="transient") from None
    finally:
        conn.close()
    more = len(rows) > query.count
    rows = rows[:query.count]
    return total, [json.loads(body) for _seq, body in rows], (int(rows[-1][0]) if more and rows else None)


def since_query(patient: str = "", since: str = "", limit: int = 10000) -> AuditQuery:
    """``pivot audit --patient P --since ISO``: oldest first, ``recorded`` compared as text."""
    query = AuditQuery(count=limit, oldest_first=True)
    if patient:
        _in("a.seq IN (SELECT seq FROM audit_patient WHERE patient IN ({marks}))", [_patient(patient)], query)
    if since:
        query.where.append("a.recorded >= ?")
        query.args.append(since)
    return query


def read_audit(path: Path, event_id: str, client_id: str | None = None) -> dict[str, Any] | None:
    """One AuditEvent by id (None when unknown, or not this client's own access when ``client_id``)."""
    query = AuditQuery(where=["a.id = ?"], args=[event_id], count=1)
    if client_id is not None:
        query.only_agent(client_id)
    _total, events, _next = search_audit(path, query)
    return events[0] if events else None

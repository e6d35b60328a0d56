"""Searching the audit trail the FHIR way (IHE BALP / RESTful ATNA): ``GET /fhir/AuditEvent?…``.

The AuditEvents live in ``audit.sqlite`` (audit_trail.py: one row per event, its Patients in
``audit_patient``); this module turns search parameters into typed conditions
(:class:`~gateway.eventlog.audit_store.AuditTerm`) that the trail's file answers with one SQL query
(gateway/eventlog/audit_store.py), so the HTTP route and ``pivot audit`` read the same rows the
same way (no second copy of the trail).

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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.eventlog.audit_store import AuditTerm, TermKind, search
from gateway.fhirstore.capability import OTHER_SEARCH_PARAMS
from gateway.fhirstore.dates import date_range, instant_text

DEFAULT_COUNT = 50
MAX_COUNT = 1000
KNOWN = frozenset(name for name, _type, _doc in OTHER_SEARCH_PARAMS["AuditEvent"]) | {"_page", "_format"}
_PREFIX = re.compile(r"(eq|ne|gt|ge|lt|le)?(.+)")
_PAGE = re.compile(r"s(\d{1,18})")


def bad(message: str) -> StoreError:
    return StoreError(message, status=400, issue_code="invalid")


@dataclass(slots=True)
class AuditQuery:
    """The conditions of one search (AND-ed), its page size and position."""

    terms: list[AuditTerm] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    before_seq: int | None = None  # the page cursor: events older than this row
    oldest_first: bool = False  # ``pivot audit`` prints the trail in order

    def only_agent(self, client_id: str) -> None:
        """Restrict to the accesses this client made (an organisation-bound caller's own trail)."""
        self.terms.append(AuditTerm("client", (client_id,)))


def _values(name: str, text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if not text or any(not v for v in values):
        raise bad(f"parameter {name}: empty value")
    return values


def _in(kind: TermKind, values: list[str], query: AuditQuery) -> None:
    query.terms.append(AuditTerm(kind, tuple(values)))


def _patient(value: str) -> str:
    ref = value if value.startswith("Patient/") else f"Patient/{value}"
    if ref.count("/") != 1 or not ref.split("/", 1)[1]:
        raise bad("parameter patient: a Patient id or Patient/id")
    return ref


def _token(name: str, values: list[str], query: AuditQuery) -> None:
    """``system|code`` or ``code`` against AuditEvent.type (one Coding) or .subtype (a list)."""
    for value in values:
        system, bar, code = value.rpartition("|")
        if not code or (bar and not system):
            raise bad(f"parameter {name}: a code or system|code")
    query.terms.append(AuditTerm("type" if name == "type" else "subtype", tuple(values)))


def _date(value: str, query: AuditQuery) -> None:
    match = _PREFIX.fullmatch(value)
    assert match is not None
    prefix, text = match.group(1) or "eq", match.group(2)
    try:
        lo, hi = date_range(text)
    except ValueError:
        raise bad("parameter date: not a FHIR date, dateTime or instant") from None
    query.terms.append(AuditTerm("date", (prefix, instant_text(lo), instant_text(hi))))


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
            _in("patient", [_patient(v) for v in _values(name, text)], query)
        elif name == "entity":
            _in("entity", _values(name, text), query)
        elif name == "agent":
            _in("agent", _values(name, text), query)
        elif name == "date":
            _date(text, query)
        elif name in ("type", "subtype"):
            _token(name, _values(name, text), query)
        elif name == "outcome":
            values = _values(name, text)
            if not set(values) <= {"0", "4", "8", "12"}:
                raise bad("parameter outcome: 0, 4, 8 or 12")
            _in("outcome", values, query)
    return query


def search_audit(path: Path, query: AuditQuery) -> tuple[int, list[dict[str, Any]], int | None]:
    """(total matching, this page's AuditEvents newest first, the cursor of the next page or None);
    503 when the trail's file is unreadable."""
    return search(path, query.terms, count=query.count, before_seq=query.before_seq, oldest_first=query.oldest_first)


def since_query(patient: str = "", since: str = "", limit: int = 10000) -> AuditQuery:
    """``pivot audit --patient P --since ISO``: oldest first, ``recorded`` compared as text."""
    query = AuditQuery(count=limit, oldest_first=True)
    if patient:
        _in("patient", [_patient(patient)], query)
    if since:
        query.terms.append(AuditTerm("since", (since,)))
    return query


def read_audit(path: Path, event_id: str, client_id: str | None = None) -> dict[str, Any] | None:
    """One AuditEvent by id (None when unknown, or not this client's own access when ``client_id``)."""
    query = AuditQuery(terms=[AuditTerm("id", (event_id,))], count=1)
    if client_id is not None:
        query.only_agent(client_id)
    _total, events, _next = search_audit(path, query)
    return events[0] if events else None

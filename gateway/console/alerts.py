"""Alerts as the console shows them: every Communication of category ``alert`` in the store.

Défi Santé ER alerts (er-arrival, er-arrival-family, er-cancelled, er-discharge) and the pharmacy's
alerts are Communications with the communication-category ``alert``; their *kind* is the other
category code. An alert is **open** while it still asks for something:

- ``er-arrival``: the ER visit is still in progress (in the ER-visit register, no departure, an
  open status, arrived less than 72 hours ago); a discharge or a cancel closes it;
- an alert of another kind that is not a follow-up notice (the pharmacy's): sent in the last 7 days;
- ``er-arrival-family``, ``er-cancelled``, ``er-discharge`` are notices, never open.

The live feed reads the store's version sequence (``versions.seq``, one number per write, in
commit order) of Communications: a cursor that has no gap, survives a restart (it is the SSE
event id) and sees writes made by another process sharing the store file.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.defisante.codes import JSON, ref_id
from gateway.defisante.register import Register, Visit, site_of
from gateway.fhirstore import FhirStore, queries
from gateway.fhirstore.dates import date_range

COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
NOTICES = frozenset({"er-arrival-family", "er-cancelled", "er-discharge"})
_OPEN_STATUSES = frozenset({"arrived", "triaged", "in-progress", "onleave", "unknown"})
_ER_MAX_MS = 72 * 3_600_000
_RECENT_MS = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    kind: str
    priority: str
    sent: str
    sent_ms: int | None
    patient_id: str
    text: str
    encounter_id: str
    site: str


def _ms(text: str) -> int | None:
    try:
        return date_range(text)[0] if text else None
    except ValueError:
        return None


def alert_of(comm: JSON) -> Alert | None:
    """The Alert of a Communication, None when it is not of category ``alert``."""
    codings = [c for cat in comm.get("category") or [] if isinstance(cat, dict)
               for c in cat.get("coding") or [] if isinstance(c, dict)]
    if not any(c.get("system") == COMM_CATEGORY and c.get("code") == "alert" for c in codings):
        return None
    kind = next((str(c["code"]) for c in codings if c.get("system") != COMM_CATEGORY and c.get("code")), "alert")
    text = next((str(p["contentString"]) for p in comm.get("payload") or []
                 if isinstance(p, dict) and isinstance(p.get("contentString"), str)), "")
    sent = str(comm.get("sent") or "")
    return Alert(str(comm.get("id") or ""), kind, str(comm.get("priority") or "routine"), sent, _ms(sent),
                 ref_id(comm.get("subject"), "Patient") or "", text, ref_id(comm.get("encounter"), "Encounter") or "",
                 site_of(comm))


def recent_alerts(store: FhirStore, patient_ids: list[str] | None = None, limit: int = 500) -> list[Alert]:
    """The latest alerts (of these patients), most recent write first."""
    params = [("category", f"{COMM_CATEGORY}|alert"), ("_sort", "-_lastUpdated"), ("_count", str(limit))]
    if patient_ids:
        params.append(("patient", ",".join(f"Patient/{p}" for p in patient_ids)))
    _q, page = store.search("Communication", params)
    out = [a for e in page.entries if e.resource is not None and (a := alert_of(e.resource)) is not None]
    out.sort(key=lambda a: a.sent_ms or 0, reverse=True)
    return out


def visits_by_encounter(register: Register) -> dict[str, Visit]:
    return {v.encounter_id: v for v in register.visits}


def is_open(alert: Alert, visits: dict[str, Visit], now_ms: int) -> bool:
    """See the module docstring."""
    if alert.kind in NOTICES:
        return False
    if alert.kind == "er-arrival":
        visit = visits.get(alert.encounter_id)
        if visit is None or visit.departure or visit.status not in _OPEN_STATUSES:
            return False
        return visit.arrival_ms is not None and now_ms - visit.arrival_ms <= _ER_MAX_MS
    return alert.sent_ms is not None and now_ms - alert.sent_ms <= _RECENT_MS


def alert_time(alert: Alert, visits: dict[str, Visit] | None) -> str:
    """The moment the alert is about: a discharge's departure, an arrival's (or a cancelled
    registration's) arrival, from the ER-visit register; else when it was sent."""
    visit = (visits or {}).get(alert.encounter_id)
    if visit is not None:
        if alert.kind == "er-discharge" and visit.departure:
            return visit.departure
        if alert.kind != "er-discharge" and visit.arrival:
            return visit.arrival
    return alert.sent


def alert_json(alert: Alert, *, open_: bool, patient: JSON, site_label: str,
               visits: dict[str, Visit] | None = None) -> JSON:
    """``at``: the moment the alert is about (see :func:`alert_time`); ``sent``: when it was raised."""
    return {"id": alert.id, "kind": alert.kind, "priority": alert.priority, "sent": alert.sent,
            "at": alert_time(alert, visits), "patient": patient, "text": alert.text,
            "encounter": alert.encounter_id, "site": alert.site, "siteLabel": site_label, "open": open_}


# -- the live feed ---------------------------------------------------------------------------------
def latest_seq(store: FhirStore) -> int:
    """The store's latest version sequence number of a Communication (0 when none)."""
    return queries.latest_seq(store, "Communication")


def alerts_after(store: FhirStore, seq: int, limit: int = 50) -> tuple[list[tuple[int, Alert]], int]:
    """Alerts written after ``seq`` (at most ``limit`` versions read) and the cursor to resume from."""
    out: list[tuple[int, Alert]] = []
    cursor = seq
    for number, body in queries.versions_after(store, "Communication", seq, limit):
        cursor = number
        if body is None:  # a deletion
            continue
        alert = alert_of(body)
        if alert is not None:
            out.append((cursor, alert))
    return out, cursor

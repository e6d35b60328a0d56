"""The before/after figures: ``$defi-sante-outcomes`` per client and for the cohort, plus the month
series the charts draw (the program's "1,054 → 254" figure, computed from the data). The method is
the operation's (gateway.defisante.outcomes): the charts draw the clients the figures compare."""

from __future__ import annotations

from gateway.console.common import ConsoleSource, iso
from gateway.console.people import Names, refs, sort_key
from gateway.console.series import month_index, relative
from gateway.defisante import outcomes as ops
from gateway.defisante.codes import JSON
from gateway.defisante.register import Register, Visit


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def line_json(line: ops.ClientOutcome) -> JSON:
    """One client's figures (the names of the operation's output parameters)."""
    return {"status": "active" if line.active else "ended", "enrolled": line.enrolled, "ended": line.ended,
            "followUpDays": round(line.follow_up_days, 2), "erVisitsBefore": line.visits_before,
            "erVisitsSince": line.visits_since, "erVisitsSinceAnnualised": _round(line.visits_since_annualised),
            "hospitalDaysBefore": line.hospital_days_before, "hospitalDaysSince": line.hospital_days_since,
            "hospitalDaysSinceAnnualised": _round(line.hospital_days_since_annualised),
            "followUpSufficient": line.followed, "erVisitsFirstYear": line.visits_first_year}


def _last_month(line: ops.ClientOutcome, as_of: int) -> int | None:
    start = month_index(line.enrolled)
    last = month_index(line.ended or iso(as_of))
    return None if start is None or last is None else max(start, last)


def outcomes(src: ConsoleSource) -> JSON:
    """Cohort summary, one line per client (with the name) and the cohort's month series."""
    lines, as_of = src.defisante.outcomes()
    register: Register = src.defisante.register()
    by_person = register.visits_by_person()
    names = Names(src.store)
    clients: list[JSON] = []
    spans: list[tuple[str, int, list[Visit]]] = []
    for line in lines:
        clients.append({**names.patient(line.patient_id), **line_json(line)})
        last = _last_month(line, as_of)
        if last is not None and line.followed:  # the chart draws the clients the figures compare
            spans.append((line.enrolled, last, by_person.get(register.person(line.patient_id), [])))
    clients.sort(key=lambda c: (not c["followUpSufficient"], -c["erVisitsBefore"], sort_key(c["name"])))
    least = src.defisante.min_follow_up_days
    return {"asOf": iso(as_of), "cohort": ops.cohort_summary(lines, least), "clients": clients,
            "firstClients": ops.first_clients(lines), "relative": relative(spans),
            "patient": refs([c["id"] for c in clients])}


def client_outcome(src: ConsoleSource, patient_id: str) -> JSON | None:
    """The figures of one client (None when never enrolled)."""
    lines, _as_of = src.defisante.outcomes(patient=patient_id)
    return {**line_json(lines[0]), "minFollowUpDays": src.defisante.min_follow_up_days} if lines else None

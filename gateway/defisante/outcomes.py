"""``$defi-sante-outcomes``: ER use before and since enrollment, per client and for the cohort.

The program was legitimised by numbers (1,054 ER visits a year before, 254 after, for its first
200 clients). For each client ever enrolled (a Défi Santé Flag), with ``T`` = Flag.period.start
and ``E`` = the Flag's end, else the as-of date (default: now):

- ``erVisitsBefore``: ER visits (the register's, every visit: exclusion rules only choose
  candidates) with an arrival in the 12 months before ``T``;
- ``erVisitsSince``: visits in ``[T, E]``; ``followUpDays`` = ``E - T``;
  ``erVisitsSinceAnnualised`` = ``erVisitsSince`` × 365.25 / ``followUpDays`` (absent under one day
  of follow-up: one visit on day one is not 365 a year);
- ``hospitalDaysBefore`` / ``hospitalDaysSince`` (+ annualised): days of inpatient stays (an A01 …
  A03; an open stay counts until ``E``) overlapping each period.

The cohort adds them up: before (a year each, so already annual) against the sum of the
annualised figures, and the relative change in percent.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.defisante.candidates import months_before
from gateway.defisante.codes import JSON
from gateway.defisante.register import Register
from gateway.defisante.roster import Enrollment
from gateway.fhirstore.dates import date_range

_DAY_MS = 86_400_000
_YEAR_DAYS = 365.25


@dataclass(frozen=True, slots=True)
class ClientOutcome:
    patient_id: str
    active: bool
    enrolled: str
    ended: str
    follow_up_days: float
    visits_before: int
    visits_since: int
    hospital_days_before: float
    hospital_days_since: float

    @property
    def visits_since_annualised(self) -> float | None:
        return self.visits_since * _YEAR_DAYS / self.follow_up_days if self.follow_up_days >= 1 else None

    @property
    def hospital_days_since_annualised(self) -> float | None:
        return self.hospital_days_since * _YEAR_DAYS / self.follow_up_days if self.follow_up_days >= 1 else None


def _ms(text: str) -> int | None:
    try:
        return date_range(text)[0] if text else None
    except ValueError:
        return None


def _year_before(ms: int) -> int:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    day = months_before(moment.date(), 12)
    return int(datetime.combine(day, moment.timetz()).timestamp() * 1000)


def _overlap_days(start: int, end: int, lo: int, hi: int) -> float:
    return max(0, min(end, hi) - max(start, lo)) / _DAY_MS


def client_outcomes(register: Register, clients: list[Enrollment], as_of_ms: int) -> list[ClientOutcome]:
    """One line per client whose Flag has a readable start (see the module docstring)."""
    visits = register.visits_by_person()
    stays_by: dict[str, list[tuple[int, int | None]]] = {}
    for stay in register.stays:
        stays_by.setdefault(stay.person_id, []).append((stay.start_ms, stay.end_ms))
    out: list[ClientOutcome] = []
    for client in clients:
        start = _ms(client.start)
        if start is None:
            continue
        end = min(_ms(client.end) or as_of_ms, as_of_ms)
        end = max(end, start)
        before = _year_before(start)
        person = register.person(client.patient_id)
        times = [v.arrival_ms for v in visits.get(person, []) if v.arrival_ms is not None]
        stays = [(s, e if e is not None else end) for s, e in stays_by.get(person, [])]
        out.append(ClientOutcome(
            client.patient_id, client.active, client.start, client.end, (end - start) / _DAY_MS,
            sum(1 for t in times if before <= t < start), sum(1 for t in times if start <= t <= end),
            round(sum(_overlap_days(s, e, before, start) for s, e in stays), 2),
            round(sum(_overlap_days(s, e, start, end) for s, e in stays), 2)))
    return out


def _decimal(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _part(name: str, value: object, kind: str) -> list[JSON]:
    return [] if value is None or value == "" else [{"name": name, f"value{kind}": value}]


def cohort_summary(lines: list[ClientOutcome]) -> dict[str, float | int | None]:
    """Sums over the clients (annualised figures summed: the cohort's yearly rate)."""
    before = sum(c.visits_before for c in lines)
    annual = sum(c.visits_since_annualised or 0.0 for c in lines if c.visits_since_annualised is not None)
    followed = [c for c in lines if c.visits_since_annualised is not None]
    before_followed = sum(c.visits_before for c in followed)
    return {
        "clients": len(lines),
        "erVisitsBefore": before,
        "erVisitsSince": sum(c.visits_since for c in lines),
        "erVisitsSinceAnnualised": _decimal(annual) if followed else None,
        "followUpYears": _decimal(sum(c.follow_up_days for c in lines) / _YEAR_DAYS),
        "erVisitsChangePercent": _decimal((annual - before_followed) * 100 / before_followed)
        if before_followed else None,
        "hospitalDaysBefore": _decimal(sum(c.hospital_days_before for c in lines)),
        "hospitalDaysSince": _decimal(sum(c.hospital_days_since for c in lines)),
        "hospitalDaysSinceAnnualised": _decimal(sum(c.hospital_days_since_annualised or 0.0 for c in lines)),
    }


def parameters(lines: list[ClientOutcome], as_of_ms: int) -> JSON:
    """The operation's answer: a Parameters resource (asOf, cohort, one client part each)."""
    as_of = datetime.fromtimestamp(as_of_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    cohort: list[JSON] = []
    for name, value in cohort_summary(lines).items():
        cohort += _part(name, value, "Integer" if name in ("clients", "erVisitsBefore", "erVisitsSince")
                        else "Decimal")
    params: list[JSON] = [{"name": "asOf", "valueDateTime": as_of}, {"name": "cohort", "part": cohort}]
    for c in lines:
        parts = [{"name": "patient", "valueReference": {"reference": f"Patient/{c.patient_id}"}},
                 {"name": "status", "valueCode": "active" if c.active else "ended"},
                 {"name": "enrolled", "valueDateTime": c.enrolled}]
        parts += _part("ended", c.ended, "DateTime")
        parts += [{"name": "followUpDays", "valueDecimal": round(c.follow_up_days, 2)},
                  {"name": "erVisitsBefore", "valueInteger": c.visits_before},
                  {"name": "erVisitsSince", "valueInteger": c.visits_since}]
        parts += _part("erVisitsSinceAnnualised", _decimal(c.visits_since_annualised), "Decimal")
        parts += [{"name": "hospitalDaysBefore", "valueDecimal": c.hospital_days_before},
                  {"name": "hospitalDaysSince", "valueDecimal": c.hospital_days_since}]
        parts += _part("hospitalDaysSinceAnnualised", _decimal(c.hospital_days_since_annualised), "Decimal")
        params.append({"name": "client", "part": parts})
    return {"resourceType": "Parameters", "parameter": params}


CSV_COLUMNS = ("patient_id", "status", "enrolled", "ended", "follow_up_days", "er_visits_before", "er_visits_since",
               "er_visits_since_annualised", "hospital_days_before", "hospital_days_since",
               "hospital_days_since_annualised")


def csv_text(lines: list[ClientOutcome]) -> str:
    """One line per client, then a ``cohort`` line with the sums."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def show(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for c in lines:
        writer.writerow([c.patient_id, "active" if c.active else "ended", c.enrolled, c.ended,
                         show(c.follow_up_days), c.visits_before, c.visits_since, show(c.visits_since_annualised),
                         show(c.hospital_days_before), show(c.hospital_days_since),
                         show(c.hospital_days_since_annualised)])
    s = cohort_summary(lines)
    writer.writerow(["cohort", f"{s['clients']} clients", "", "", "", s["erVisitsBefore"], s["erVisitsSince"],
                     s["erVisitsSinceAnnualised"], s["hospitalDaysBefore"], s["hospitalDaysSince"],
                     s["hospitalDaysSinceAnnualised"]])
    return buf.getvalue()


def as_of_ms(text: str | None) -> int:
    """End of the given date (or the dateTime itself), default now."""
    if not text:
        return int(datetime.now(UTC).timestamp() * 1000)
    lo, hi = date_range(text)
    return hi if len(text) <= 10 else lo


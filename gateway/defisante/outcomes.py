"""``$defi-sante-outcomes``: ER use before and since enrollment, per client and for the cohort.

The program was legitimised by numbers (1,054 ER visits a year before, 254 after, for its first
200 clients). The method, stated once here, in the OperationDefinition, the console and the README:

- each client ever enrolled (a Défi Santé Flag): ``T`` = Flag.period.start, ``E`` = the Flag's end,
  else the as-of date (default: now); ``followUpDays`` = ``E - T``;
- **visit times are compared at their own precision**: a visit is *since* enrollment when the time
  it stands for (``2025-03-01T10:05`` is the whole minute) reaches the enrollment's minute, so a visit
  in the enrollment's minute counts *after* it; *before* = arrival in the 365 days before that minute;
  *since* = from that minute to ``E``. Every ER visit of the register counts (exclusion rules only
  choose candidates);
- **the same clients on both sides**: the cohort is the clients with at least ``minFollowUpDays`` of
  follow-up (default 90, ``PIVOT_OUTCOMES_MIN_FOLLOW_UP_DAYS``); the others are listed, marked
  "suivi insuffisant", and counted in neither rate;
- **rates per client-year** (365 days): before = visits in the year before / clients; since =
  visits since / (follow-up days / 365) summed over the same clients; ``erVisitsChangePercent`` is
  computed from those two rates, beside ``clientsCompared``. ``erVisitsBefore`` and
  ``erVisitsSinceAnnualised`` are the same two rates times the number of clients (the cohort's year
  before against its year at the rate since), so "X → Y" compares like with like;
- **the seed's table** (``firstClients``): for the clients with a full year of follow-up, in
  enrollment order, "the first N clients: X ER visits the year before, Y the year after";
- ``hospitalDaysBefore`` / ``hospitalDaysSince``: days of inpatient stays (A01 … A03; an open stay
  counts until ``E``) overlapping each period, on the same clients.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.defisante.codes import JSON
from gateway.defisante.register import Register
from gateway.defisante.roster import Enrollment
from gateway.fhirstore.dates import date_range

_DAY_MS = 86_400_000
_MINUTE_MS = 60_000
YEAR_DAYS = 365
DEFAULT_MIN_FOLLOW_UP_DAYS = 90
FIRST_CLIENTS_STEPS = (10, 25, 50, 100, 200, 500, 1000, 2000)


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
    followed: bool = True  # at least the minimum follow-up: in the compared cohort
    visits_first_year: int | None = None  # the 365 days from enrollment (None under a full year)

    @property
    def visits_since_annualised(self) -> float | None:
        return self.visits_since * YEAR_DAYS / self.follow_up_days if self.follow_up_days >= 1 else None

    @property
    def hospital_days_since_annualised(self) -> float | None:
        return self.hospital_days_since * YEAR_DAYS / self.follow_up_days if self.follow_up_days >= 1 else None


def _range(text: str) -> tuple[int, int] | None:
    """The inclusive millisecond range a FHIR date/dateTime stands for (None when unreadable)."""
    try:
        return date_range(text) if text else None
    except ValueError:
        return None


def enrollment_ms(text: str) -> int | None:
    """The enrollment's moment as the outcomes compare it: the start of its minute."""
    found = _range(text)
    return None if found is None else found[0] - found[0] % _MINUTE_MS


def is_since(arrival: str, start_ms: int) -> bool:
    """Is a visit since the enrollment, at the arrival's own precision (its minute, hour or day
    reaches the enrollment's minute)? An unreadable arrival is neither (False)."""
    found = _range(arrival)
    return found is not None and found[1] >= start_ms


def _overlap_days(start: int, end: int, lo: int, hi: int) -> float:
    return max(0, min(end, hi) - max(start, lo)) / _DAY_MS


def split_visits(arrivals: list[tuple[int, int]], start: int, end: int) -> tuple[int, int, int | None]:
    """Visits before / since ``start`` (ms, already cut to its minute) up to ``end``, and in the first
    365 days since (None when ``end`` is less than a year after). An arrival ``(lo, hi)`` is the
    range its text stands for: since when ``hi >= start`` (its minute, hour or day reaches the
    enrollment's minute), before when it ends before and starts at most 365 days earlier."""
    year = YEAR_DAYS * _DAY_MS
    before = sum(1 for lo, hi in arrivals if hi < start and lo >= start - year)
    since = sum(1 for lo, hi in arrivals if hi >= start and lo <= end)
    first = sum(1 for lo, hi in arrivals if hi >= start and lo < start + year) if end - start >= year else None
    return before, since, first


def client_outcomes(register: Register, clients: list[Enrollment], as_of_ms: int,
                    min_follow_up_days: float = DEFAULT_MIN_FOLLOW_UP_DAYS) -> list[ClientOutcome]:
    """One line per client whose Flag has a readable start (see the module docstring)."""
    visits = register.visits_by_person()
    stays_by: dict[str, list[tuple[int, int | None]]] = {}
    for stay in register.stays:
        stays_by.setdefault(stay.person_id, []).append((stay.start_ms, stay.end_ms))
    out: list[ClientOutcome] = []
    for client in clients:
        start = enrollment_ms(client.start)
        if start is None:
            continue
        ended = _range(client.end)
        end = max(min(ended[0] if ended else as_of_ms, as_of_ms), start)
        person = register.person(client.patient_id)
        arrivals = [r for v in visits.get(person, []) if (r := _range(v.arrival)) is not None]
        before, since, first = split_visits(arrivals, start, end)
        year_before = start - YEAR_DAYS * _DAY_MS
        stays = [(s, e if e is not None else end) for s, e in stays_by.get(person, [])]
        days = (end - start) / _DAY_MS
        out.append(ClientOutcome(
            client.patient_id, client.active, client.start, client.end, days, before, since,
            round(sum(_overlap_days(s, e, year_before, start) for s, e in stays), 2),
            round(sum(_overlap_days(s, e, start, end) for s, e in stays), 2),
            followed=days >= max(1.0, min_follow_up_days), visits_first_year=first))
    return out


def _decimal(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _part(name: str, value: object, kind: str) -> list[JSON]:
    return [] if value is None or value == "" else [{"name": name, f"value{kind}": value}]


def cohort_summary(lines: list[ClientOutcome], min_follow_up_days: float = DEFAULT_MIN_FOLLOW_UP_DAYS,
                   ) -> dict[str, float | int | None]:
    """The compared clients' rates per client-year, before and since, and the change between them."""
    same = [c for c in lines if c.followed]
    n = len(same)
    years = sum(c.follow_up_days for c in same) / YEAR_DAYS
    before = sum(c.visits_before for c in same)
    since = sum(c.visits_since for c in same)
    rate_before = before / n if n else None
    rate_since = since / years if n and years else None
    hosp_before = sum(c.hospital_days_before for c in same)
    hosp_since = sum(c.hospital_days_since for c in same)
    return {
        "clients": len(lines),
        "clientsCompared": n,
        "clientsInsufficientFollowUp": len(lines) - n,
        "minFollowUpDays": min_follow_up_days,
        "erVisitsBefore": before,
        "erVisitsSince": since,
        "followUpYears": _decimal(years),
        "erVisitsPerClientYearBefore": _decimal(rate_before),
        "erVisitsPerClientYearSince": _decimal(rate_since),
        "erVisitsSinceAnnualised": _decimal(rate_since * n) if rate_since is not None else None,
        "erVisitsChangePercent": _decimal((rate_since - rate_before) * 100 / rate_before)
        if rate_before and rate_since is not None else None,
        "hospitalDaysBefore": _decimal(hosp_before),
        "hospitalDaysSince": _decimal(hosp_since),
        "hospitalDaysSinceAnnualised": _decimal(hosp_since / years * n) if n and years else None,
    }


def first_clients(lines: list[ClientOutcome]) -> list[dict[str, int]]:
    """The seed's table: for the clients with a full year of follow-up, in enrollment order, "the
    first N clients: X ER visits the year before, Y the year after" at 10, 25, 50, 100, 200… and all."""
    full = sorted((c for c in lines if c.visits_first_year is not None),
                  key=lambda c: ((_range(c.enrolled) or (0, 0))[0], c.patient_id))
    steps = [n for n in FIRST_CLIENTS_STEPS if n < len(full)] + ([len(full)] if full else [])
    return [{"clients": n, "erVisitsYearBefore": sum(c.visits_before for c in full[:n]),
             "erVisitsYearAfter": sum(c.visits_first_year or 0 for c in full[:n])} for n in steps]


_INTEGERS = frozenset({"clients", "clientsCompared", "clientsInsufficientFollowUp", "erVisitsBefore", "erVisitsSince"})


def parameters(lines: list[ClientOutcome], as_of_ms: int,
               min_follow_up_days: float = DEFAULT_MIN_FOLLOW_UP_DAYS) -> JSON:
    """The operation's answer: a Parameters resource (asOf, cohort, firstClients, one client part each)."""
    as_of = datetime.fromtimestamp(as_of_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    cohort: list[JSON] = []
    for name, value in cohort_summary(lines, min_follow_up_days).items():
        cohort += _part(name, value, "Integer" if name in _INTEGERS else "Decimal")
    params: list[JSON] = [{"name": "asOf", "valueDateTime": as_of}, {"name": "cohort", "part": cohort}]
    for row in first_clients(lines):
        params.append({"name": "firstClients", "part": [{"name": k, "valueInteger": v} for k, v in row.items()]})
    for c in lines:
        parts = [{"name": "patient", "valueReference": {"reference": f"Patient/{c.patient_id}"}},
                 {"name": "status", "valueCode": "active" if c.active else "ended"},
                 {"name": "enrolled", "valueDateTime": c.enrolled}]
        parts += _part("ended", c.ended, "DateTime")
        parts += [{"name": "followUpDays", "valueDecimal": round(c.follow_up_days, 2)},
                  {"name": "followUpSufficient", "valueBoolean": c.followed},
                  {"name": "erVisitsBefore", "valueInteger": c.visits_before},
                  {"name": "erVisitsSince", "valueInteger": c.visits_since}]
        parts += _part("erVisitsSinceAnnualised", _decimal(c.visits_since_annualised), "Decimal")
        parts += _part("erVisitsFirstYear", c.visits_first_year, "Integer")
        parts += [{"name": "hospitalDaysBefore", "valueDecimal": c.hospital_days_before},
                  {"name": "hospitalDaysSince", "valueDecimal": c.hospital_days_since}]
        parts += _part("hospitalDaysSinceAnnualised", _decimal(c.hospital_days_since_annualised), "Decimal")
        params.append({"name": "client", "part": parts})
    return {"resourceType": "Parameters", "parameter": params}


CSV_COLUMNS = ("patient_id", "status", "enrolled", "ended", "follow_up_days", "follow_up_sufficient",
               "er_visits_before", "er_visits_since", "er_visits_since_annualised", "er_visits_first_year",
               "hospital_days_before", "hospital_days_since", "hospital_days_since_annualised")


def csv_text(lines: list[ClientOutcome], min_follow_up_days: float = DEFAULT_MIN_FOLLOW_UP_DAYS) -> str:
    """One line per client, then a ``cohort`` line: the compared clients' sums (their count in the
    second column) and the annualised rate since, for the same clients."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def show(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for c in lines:
        writer.writerow([c.patient_id, "active" if c.active else "ended", c.enrolled, c.ended,
                         show(c.follow_up_days), "yes" if c.followed else "no", c.visits_before, c.visits_since,
                         show(c.visits_since_annualised), "" if c.visits_first_year is None else c.visits_first_year,
                         show(c.hospital_days_before), show(c.hospital_days_since),
                         show(c.hospital_days_since_annualised)])
    s = cohort_summary(lines, min_follow_up_days)
    writer.writerow(["cohort", f"{s['clientsCompared']} clients compared", "", "",
                     show(s["followUpYears"] * YEAR_DAYS if s["followUpYears"] is not None else None),
                     f">= {min_follow_up_days:g} days", s["erVisitsBefore"], s["erVisitsSince"],
                     s["erVisitsSinceAnnualised"], "", s["hospitalDaysBefore"], s["hospitalDaysSince"],
                     s["hospitalDaysSinceAnnualised"]])
    return buf.getvalue()


def as_of_ms(text: str | None) -> int:
    """End of the given date (or the dateTime itself), default now."""
    if not text:
        return int(datetime.now(UTC).timestamp() * 1000)
    lo, hi = date_range(text)
    return hi if len(text) <= 10 else lo

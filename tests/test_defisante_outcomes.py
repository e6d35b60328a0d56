"""The outcomes method on a cohort computed by hand: the same clients on both sides, rates per
client-year, the change from those rates, visit times at their own precision, the seed's table.

As of 2026-01-01T00:00:00Z (every time in UTC):

- A, enrolled 2025-01-01T00:00:00Z, followed 365 days (a full year). Before: 2024-03-01, 06-01,
  09-01, 12-31T23:59 = 4 (2024-01-01T12:00 is 366 days before: out). Since: 2025-01-01T00:00 (the
  enrollment's minute), 2025-07-01 = 2; first year 2.
- B, enrolled 2025-07-05T00:00:30Z, followed 180 days (Jul 5 → Jan 1, cut to the minute). Before:
  2024-08-01, 10-01, 11-15, 2025-02-01, 05-20, 2025-07-04T23:59:59 = 6. Since: 2025-07-05T00:00
  (minute precision, in the enrollment's minute: after, although it starts 30 s before) and
  2025-09-10T08:00 = 2.
- C, enrolled 2025-12-01T00:00:00Z, followed 31 days < 90: "suivi insuffisant", in no rate
  (5 visits before, 1 since).

Compared: A and B. Before 4 + 6 = 10 visits, 2 client-years → 5.00 per client-year. Since 2 + 2 = 4
visits over (365 + 180) / 365 = 1.4932 client-years → 2.68 per client-year; × 2 clients = 5.36.
Change (2.6789 − 5) / 5 = −46.42 %. The seed's table: the first 1 client: 4 the year before, 2 after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.defisante import codes, outcomes
from gateway.defisante.service import DefiSante
from gateway.fhirstore import FhirStore
from gateway.settings import load_settings

AS_OF = "2026-01-01T00:00:00Z"
COHORT: dict[str, tuple[str, list[str]]] = {
    "a": ("2025-01-01T00:00:00Z", ["2024-01-01T12:00:00Z", "2024-03-01T09:00:00Z", "2024-06-01T09:00:00Z",
                                   "2024-09-01T09:00:00Z", "2024-12-31T23:59Z", "2025-01-01T00:00Z",
                                   "2025-07-01T09:00:00Z"]),
    "b": ("2025-07-05T00:00:30Z", ["2024-08-01T09:00:00Z", "2024-10-01T09:00:00Z", "2024-11-15T09:00:00Z",
                                   "2025-02-01T09:00:00Z", "2025-05-20T09:00:00Z", "2025-07-04T23:59:59Z",
                                   "2025-07-05T00:00Z", "2025-09-10T08:00:00Z"]),
    "c": ("2025-12-01T00:00:00Z", ["2025-01-01T09:00:00Z", "2025-02-01T09:00:00Z", "2025-03-01T09:00:00Z",
                                   "2025-04-01T09:00:00Z", "2025-05-01T09:00:00Z", "2025-12-15T09:00:00Z"]),
}


def _resources() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pid, (enrolled, arrivals) in COHORT.items():
        out.append({"resourceType": "Patient", "id": pid, "identifier": [
            {"system": codes.NAM_SYSTEM, "value": f"TEST{pid.upper()}0101010"}]})
        out.append({"resourceType": "Flag", "id": codes.flag_id(pid), "status": "active",
                    "code": codes.program_concept(), "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": enrolled}})
        out += [{"resourceType": "Encounter", "id": f"{pid}-{n}", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": codes.EMERGENCY},
                 "subject": {"reference": f"Patient/{pid}"}, "period": {"start": when}}
                for n, when in enumerate(arrivals)]
    return out


@pytest.fixture
def service(tmp_path: Path) -> Any:
    store = FhirStore(tmp_path / "fhir.sqlite")
    store.upsert_many(_resources())
    yield DefiSante(store, None, load_settings(data_dir=tmp_path))
    store.close()


def test_each_client_counts_at_the_visit_s_own_precision(service: DefiSante) -> None:
    lines, _ = service.outcomes(AS_OF)
    got = {c.patient_id: (c.visits_before, c.visits_since, round(c.follow_up_days, 2), c.followed,
                          c.visits_first_year) for c in lines}
    assert got == {"a": (4, 2, 365.0, True, 2), "b": (6, 2, 180.0, True, None), "c": (5, 1, 31.0, False, None)}


def test_the_cohort_compares_the_same_clients_per_client_year(service: DefiSante) -> None:
    lines, as_of = service.outcomes(AS_OF)
    s = outcomes.cohort_summary(lines, service.min_follow_up_days)
    assert s["clients"] == 3
    assert s["clientsCompared"] == 2
    assert s["clientsInsufficientFollowUp"] == 1
    assert s["erVisitsBefore"] == 10
    assert s["erVisitsSince"] == 4
    assert s["erVisitsPerClientYearBefore"] == 5.0
    assert s["erVisitsPerClientYearSince"] == 2.68
    assert s["erVisitsSinceAnnualised"] == 5.36
    assert s["erVisitsChangePercent"] == -46.42
    assert outcomes.first_clients(lines) == [{"clients": 1, "erVisitsYearBefore": 4, "erVisitsYearAfter": 2}]
    answer = outcomes.parameters(lines, as_of, service.min_follow_up_days)
    (cohort,) = [p for p in answer["parameter"] if p["name"] == "cohort"]
    parts = {p["name"]: p for p in cohort["part"]}
    assert parts["clientsCompared"]["valueInteger"] == 2
    assert parts["erVisitsChangePercent"]["valueDecimal"] == -46.42
    (first,) = [p for p in answer["parameter"] if p["name"] == "firstClients"]
    assert [p["valueInteger"] for p in first["part"]] == [1, 4, 2]


def test_the_minimum_follow_up_is_a_setting(tmp_path: Path) -> None:
    store = FhirStore(tmp_path / "fhir.sqlite")
    try:
        store.upsert_many(_resources())
        strict = DefiSante(store, None, load_settings(data_dir=tmp_path, outcomes_min_follow_up_days=200))
        lines, _ = strict.outcomes(AS_OF)
        s = outcomes.cohort_summary(lines, strict.min_follow_up_days)
        assert (s["clientsCompared"], s["erVisitsBefore"], s["erVisitsSince"]) == (1, 4, 2)
        assert s["erVisitsChangePercent"] == -50.0  # A alone: 4 → 2 a year
        assert "suivi" not in outcomes.csv_text(lines)  # the CSV says yes / no
        assert outcomes.csv_text(lines, 200).splitlines()[-1].startswith("cohort,1 clients compared")
    finally:
        store.close()

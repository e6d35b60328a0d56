"""The medication profile with a real FhirStore: MedicationStatements from a sequence of dispenses,
refills, a stop, several pharmacies, a whole-profile message, expiry, and what is published."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.fhirstore import FhirStore
from gateway.pharmacy import PharmacyRules
from gateway.pharmacy.statements import statement_id
from tests.test_pharmacy_support import (
    dispense,
    feed,
    map_raw,
    open_store,
    profile,
    settings_for,
    stop_order,
)

JSON = dict[str, Any]
ATORVA, METFO, RAMI = ("99100052", "Atorvastatine 20 mg"), ("99100051", "Metformine 500 mg"), ("99100054", "Ramipril")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FhirStore]:
    yield from open_store(tmp_path, monkeypatch)


@pytest.fixture
def rules(store: FhirStore, tmp_path: Path) -> PharmacyRules:
    return PharmacyRules(store, settings_for(tmp_path))



def statements(store: FhirStore, patient_id: str, status: str | None = None) -> dict[str, JSON]:
    params = [("patient", patient_id)] + ([("status", status)] if status else [])
    _q, page = store.search("MedicationStatement", params)
    return {str(e.resource["medicationCodeableConcept"]["text"]): e.resource for e in page.entries if e.resource}


def test_dispenses_refill_and_stop(rules: PharmacyRules, store: FhirStore) -> None:
    first, out = feed(rules, dispense("A1", *ATORVA, "20260301100000", rx="RX1"), "2026-03-01T16:00:00Z")
    pid = str(first.patient_id)
    line = statements(store, pid, "active")[ATORVA[1]]
    assert line["id"] == statement_id(pid, "atc|C10AA05")
    assert line["effectivePeriod"] == {"start": "2026-03-01T10:00:00-05:00", "end": "2026-03-30"}
    assert line["category"]["coding"][0]["code"] == "community"
    assert [o.topic for o in out] == ["pivot.fhir.MedicationStatement", "pivot.fhir.Bundle"]
    feed(rules, dispense("A2", *ATORVA, "20260329100000", rx="RX1", fill="2"), "2026-03-29T16:00:00Z")
    line = statements(store, pid, "active")[ATORVA[1]]
    assert line["effectivePeriod"] == {"start": "2026-03-01T10:00:00-05:00", "end": "2026-04-27"}
    assert len(line["derivedFrom"]) == 2
    feed(rules, stop_order("A3", *ATORVA, "20260410120000", rx="RX1"), "2026-04-10T17:00:00Z")
    line = statements(store, pid)[ATORVA[1]]
    assert line["status"] == "stopped"
    assert line["effectivePeriod"]["end"] == "2026-04-10T12:00:00-04:00"
    assert statements(store, pid, "active") == {}


def test_the_profile_spans_pharmacies_and_a_stop_ends_only_its_own_supply(rules: PharmacyRules,
                                                                         store: FhirStore) -> None:
    first, _ = feed(rules, dispense("B1", *ATORVA, "20260301100000", pharmacy="PHARM-STE-AGATHE", rx="RX1"),
                    "2026-03-01T16:00:00Z")
    feed(rules, dispense("B2", *METFO, "20260302100000", pharmacy="PHARM-LACHUTE", rx="L7"), "2026-03-02T16:00:00Z")
    feed(rules, dispense("B3", *ATORVA, "20260305100000", pharmacy="PHARM-LACHUTE", rx="L8"), "2026-03-05T16:00:00Z")
    pid = str(first.patient_id)
    assert set(statements(store, pid, "active")) == {ATORVA[1], METFO[1]}
    feed(rules, stop_order("B4", *ATORVA, "20260306120000", pharmacy="PHARM-STE-AGATHE", rx="RX1"),
         "2026-03-06T17:00:00Z")
    active = statements(store, pid, "active")
    assert set(active) == {ATORVA[1], METFO[1]}  # Lachute still supplies it
    assert active[ATORVA[1]]["informationSource"]["reference"].startswith("Organization/")


def test_a_whole_profile_message_stops_what_it_leaves_out(rules: PharmacyRules, store: FhirStore) -> None:
    first, _ = feed(rules, dispense("C1", *ATORVA, "20260301100000", rx="RX1"), "2026-03-01T16:00:00Z")
    feed(rules, dispense("C2", *RAMI, "20260301100500", rx="RX2"), "2026-03-01T16:00:00Z")
    feed(rules, dispense("C3", *METFO, "20260302100000", pharmacy="PHARM-LACHUTE", rx="L1"), "2026-03-02T16:00:00Z")
    pid = str(first.patient_id)
    assert len(statements(store, pid, "active")) == 3
    feed(rules, profile("C4", "20260310090000", [(*ATORVA, "RX1", "20260301100000")]), "2026-03-10T14:00:00Z")
    lines = statements(store, pid)
    assert (lines[ATORVA[1]]["status"], lines[RAMI[1]]["status"], lines[METFO[1]]["status"]) == \
        ("active", "stopped", "active")
    assert lines[RAMI[1]]["effectivePeriod"]["end"] == "2026-03-10T09:00:00-04:00"
    feed(rules, profile("C5", "20260311090000", []), "2026-03-11T14:00:00Z")  # nothing active any more there
    assert set(statements(store, pid, "active")) == {METFO[1]}
    feed(rules, dispense("C6", *RAMI, "20260320100000", rx="RX9"), "2026-03-20T16:00:00Z")  # restarted later
    line = statements(store, pid, "active")[RAMI[1]]
    assert line["effectivePeriod"]["start"] == "2026-03-20T10:00:00-04:00"


def test_expire_completes_a_supply_that_ran_out(rules: PharmacyRules, store: FhirStore) -> None:
    first, _ = feed(rules, dispense("D1", *ATORVA, "20260301100000"), "2026-03-01T16:00:00Z")
    pid = str(first.patient_id)
    assert rules.expire("2026-04-02T00:00:00Z") == []  # within the refill grace (7 days)
    out = rules.expire("2026-04-20T00:00:00Z")
    assert [json.loads(o.value)["resource"]["status"] for o in out if o.topic == "pivot.fhir.MedicationStatement"] == \
        ["completed"]
    assert statements(store, pid)[ATORVA[1]]["status"] == "completed"
    assert rules.expire("2026-04-21T00:00:00Z") == []


def test_a_resend_writes_nothing_new_and_republishes_its_drug(rules: PharmacyRules, store: FhirStore) -> None:
    first, _ = feed(rules, dispense("E1", *ATORVA, "20260301100000"), "2026-03-01T16:00:00Z")
    pid = str(first.patient_id)
    version = store.read("MedicationStatement", statement_id(pid, "atc|C10AA05")).version
    _again, out = feed(rules, dispense("E1-RESENT", *ATORVA, "20260301100000"), "2026-03-01T18:00:00Z")
    assert store.read("MedicationStatement", statement_id(pid, "atc|C10AA05")).version == version
    assert [o.topic for o in out] == ["pivot.fhir.MedicationStatement", "pivot.fhir.Bundle"]


def test_statements_validate_and_name_no_one(rules: PharmacyRules, store: FhirStore) -> None:
    from gateway.fhir.models import validate

    first, out = feed(rules, dispense("F1", *ATORVA, "20260301100000"), "2026-03-01T16:00:00Z")
    for line in statements(store, str(first.patient_id)).values():
        validate({k: v for k, v in line.items() if k != "meta"})
    text = b"".join(o.value for o in out).decode()
    assert "Gagnon" not in text
    assert "Hélène" not in text
    assert PharmacyRules().on_mapped(first, "2026-03-01T16:00:00Z") == []  # no store: nothing


def test_a_store_that_fails_makes_the_worker_retry(rules: PharmacyRules, store: FhirStore) -> None:
    from gateway.errors import PublishError

    result = map_raw(dispense("G1", *ATORVA, "20260301100000"))
    store.close()
    with pytest.raises(PublishError):
        rules.on_mapped(result, "2026-03-01T16:00:00Z")


def test_a_rule_bug_never_stops_the_feed(rules: PharmacyRules, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise KeyError("Gagnon")

    monkeypatch.setattr("gateway.pharmacy.rules.evaluate", boom)
    result = map_raw(dispense("G2", *ATORVA, "20260301100000"))
    assert rules.on_mapped(result, "2026-03-01T16:00:00Z") == []
    assert "error=KeyError control_id=G2" in caplog.text
    assert "Gagnon" not in caplog.text

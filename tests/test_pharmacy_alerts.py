"""Alerts and the care team of enrolled clients, with a real FhirStore: each rule firing and not
firing, resends, a replay after a crash, clients not enrolled, the event envelope, and the logs."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.defisante import codes
from gateway.eventlog.base import OutRecord
from gateway.fhir.models import validate
from gateway.fhirstore import FhirStore
from gateway.pharmacy import PharmacyRules
from gateway.pharmacy.config import KINDS
from tests.test_pharmacy_support import dispense, enroll, feed, open_store, settings_for

JSON = dict[str, Any]
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "defisante" / "alert-event.schema.json"
OXY, HYDRO = ("99100001", "Oxycodone 5 mg"), ("99100002", "Hydromorphone 2 mg")
LORA, TEMA = ("99100011", "Lorazépam 1 mg"), ("99100013", "Témazépam 15 mg")
PLAIN = [("99100051", "Metformine"), ("99100052", "Atorvastatine"), ("99100054", "Ramipril"),
         ("99100055", "Amlodipine"), ("99100056", "Métoprolol"), ("99100057", "Furosémide"),
         ("99100058", "Pantoprazole"), ("99100059", "Sertraline"), ("99100061", "Lévothyroxine"),
         ("99100062", "Salbutamol"), ("99100063", "Acétaminophène"), ("99100066", "Losartan")]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FhirStore]:
    yield from open_store(tmp_path, monkeypatch)


@pytest.fixture
def rules(store: FhirStore, tmp_path: Path) -> PharmacyRules:
    return PharmacyRules(store, settings_for(tmp_path))



def enrolled(rules: PharmacyRules) -> str:
    """A client known by a first harmless dispense, then enrolled (case manager Practitioner/cm-1)."""
    assert rules.store is not None
    result, _ = feed(rules, dispense("E0", "99100065", "Tiotropium", "20260201100000", rx="E0", days="90"),
                     "2026-02-01T16:00:00Z")
    enroll(rules.store, str(result.patient_id))
    return str(result.patient_id)


def alerts(out: list[OutRecord]) -> list[JSON]:
    return [json.loads(o.value) for o in out if o.topic == "pivot.defisante.alerts"]


def comms(out: list[OutRecord]) -> list[JSON]:
    return [json.loads(o.value)["resource"] for o in out if o.topic == "pivot.fhir.Communication"]


def test_a_high_risk_drug_start_alerts_the_case_manager_once(rules: PharmacyRules, store: FhirStore) -> None:
    pid = enrolled(rules)
    _r, out = feed(rules, dispense("H1", *OXY, "20260301100000", rx="RX1"), "2026-03-01T16:00:00Z")
    (event,) = alerts(out)
    (comm,) = comms(out)
    assert (event["kind"], event["priority"], event["patient"]) == ("pharmacy-high-risk", "urgent", f"Patient/{pid}")
    assert event["recipients"] == [{"reference": "Practitioner/cm-1"}] == comm["recipient"]
    text = comm["payload"][0]["contentString"]
    assert "Oxycodone 5 mg" in text
    assert "opioïdes" in text
    assert "risque élevé" in text
    assert "Gagnon" not in text
    assert "Hélène" not in text
    assert codes.has_code(comm["category"], "pharmacy-high-risk")
    validate(comm)
    # a resend (new MSH-10, same facts), a refill of the same episode: nothing new
    _r, out = feed(rules, dispense("H1-RESENT", *OXY, "20260301100000", rx="RX1"), "2026-03-01T18:00:00Z")
    assert alerts(out) == []
    _r, out = feed(rules, dispense("H2", *OXY, "20260328100000", rx="RX1", fill="2"), "2026-03-28T16:00:00Z")
    assert alerts(out) == []
    # another opioid starts: its own alert; the same one after a long gap: a new episode, a new alert
    _r, out = feed(rules, dispense("H3", *HYDRO, "20260401100000", rx="RX2"), "2026-04-01T16:00:00Z")
    assert [a["kind"] for a in alerts(out)] == ["pharmacy-high-risk"]
    _r, out = feed(rules, dispense("H4", *OXY, "20260901100000", rx="RX3"), "2026-09-01T16:00:00Z")
    (again,) = alerts(out)
    assert again["event_id"] != event["event_id"]


def test_a_replay_of_the_same_message_publishes_the_same_alert_again(rules: PharmacyRules) -> None:
    enrolled(rules)
    result, out = feed(rules, dispense("R1", *OXY, "20260301100000"), "2026-03-01T16:00:00Z")
    replay = rules.on_mapped(result, "2026-03-01T16:00:05Z")  # the worker crashed before its commit
    assert [c["id"] for c in comms(replay)] == [c["id"] for c in comms(out)]
    assert [a["event_id"] for a in alerts(replay)] == [a["event_id"] for a in alerts(out)]


def test_no_alert_for_a_plain_drug_or_a_client_not_enrolled(rules: PharmacyRules, store: FhirStore) -> None:
    enrolled(rules)
    _r, out = feed(rules, dispense("N1", "99100052", "Atorvastatine", "20260301100000"), "2026-03-01T16:00:00Z")
    assert alerts(out) == []
    assert comms(out) == []
    other = "TREJ45012012^^^RAMQ^JHN"
    _r, out = feed(rules, dispense("N2", *OXY, "20260301100000", pid=other, name="Tremblay^Jérôme"),
                   "2026-03-01T16:00:00Z")
    _r, out2 = feed(rules, dispense("N3", *LORA, "20260302100000", pid=other, name="Tremblay^Jérôme",
                                    pharmacy="PHARM-LACHUTE", rx="L1"), "2026-03-02T16:00:00Z")
    _r, out3 = feed(rules, dispense("N4", *TEMA, "20260303100000", pid=other, name="Tremblay^Jérôme", rx="X9"),
                    "2026-03-03T16:00:00Z")
    for records in (out, out2, out3):
        assert {o.topic for o in records} == {"pivot.fhir.MedicationStatement", "pivot.fhir.Bundle"}


def test_the_active_drug_count_crossing_the_threshold(rules: PharmacyRules) -> None:
    enrolled(rules)  # tiotropium: 1 active drug
    fired = []
    for i, (din, name) in enumerate(PLAIN[:10]):  # 2 … 11 active drugs
        _r, out = feed(rules, dispense(f"T{i}", din, name, f"202603{i + 1:02d}100000", rx=f"T{i}"),
                       f"2026-03-{i + 1:02d}T16:00:00Z")
        fired.append([a["kind"] for a in alerts(out)])
    assert fired == [[]] * 8 + [["pharmacy-active-count"], []]
    _r, out = feed(rules, dispense("T9-RESENT", *PLAIN[8], "20260309100000", rx="T8"), "2026-03-09T18:00:00Z")
    assert alerts(out) == []


def test_one_class_from_two_pharmacies_within_30_days(rules: PharmacyRules) -> None:
    enrolled(rules)
    lora = dict(pharmacy="PHARM-STE-AGATHE", rx="S1")
    _r, out = feed(rules, dispense("M1", *LORA, "20260301100000", **lora), "2026-03-01T16:00:00Z")
    assert [a["kind"] for a in alerts(out)] == ["pharmacy-high-risk"]
    _r, out = feed(rules, dispense("M2", *LORA, "20260315100000", pharmacy="PHARM-LACHUTE", rx="L1"),
                   "2026-03-15T16:00:00Z")
    (event,) = [a for a in alerts(out) if a["kind"] == "pharmacy-multi-pharmacy"]
    (comm,) = [c for c in comms(out) if codes.has_code(c["category"], "pharmacy-multi-pharmacy")]
    assert "2 pharmacies" in comm["payload"][0]["contentString"]
    assert "N05BA" in comm["payload"][0]["contentString"]
    assert event["site"] == "PHARM-LACHUTE"
    _r, out = feed(rules, dispense("M3", *LORA, "20260330100000", pharmacy="PHARM-LACHUTE", rx="L1", fill="2"),
                   "2026-03-30T16:00:00Z")
    assert alerts(out) == []  # the same run: already told


def test_two_pharmacies_far_apart_or_in_the_past_raise_nothing(rules: PharmacyRules) -> None:
    enrolled(rules)
    feed(rules, dispense("P1", "99100052", "Atorvastatine", "20260301100000", rx="A1"), "2026-03-01T16:00:00Z")
    _r, out = feed(rules, dispense("P2", "99100052", "Atorvastatine", "20260415100000", pharmacy="PHARM-LACHUTE",
                                   rx="B1"), "2026-04-15T16:00:00Z")
    assert alerts(out) == []  # 45 days apart
    feed(rules, dispense("P3", "99100051", "Metformine", "20250101100000", rx="A2"), "2026-04-16T16:00:00Z")
    _r, out = feed(rules, dispense("P4", "99100051", "Metformine", "20250110100000", pharmacy="PHARM-LACHUTE",
                                   rx="B2"), "2026-04-16T16:00:00Z")
    assert alerts(out) == []  # a backfill of last year's dispenses


def test_the_pharmacy_and_pharmacist_join_the_care_team_once(rules: PharmacyRules, store: FhirStore) -> None:
    pid = enrolled(rules)
    team = store.read("CareTeam", codes.careteam_id(pid)).resource
    assert team is not None
    members = [p["member"]["reference"] for p in team["participant"]]
    assert members[0] == "Practitioner/cm-1"
    assert len(members) == 1
    result, out = feed(rules, dispense("C1", "99100052", "Atorvastatine", "20260301100000"), "2026-03-01T16:00:00Z")
    (published,) = [json.loads(o.value)["resource"] for o in out if o.topic == "pivot.fhir.CareTeam"]
    added = published["participant"][1:]
    org = next(r for r in result.resources if r["resourceType"] == "Organization")
    pharmacist = next(r for r in result.resources if r["resourceType"] == "Practitioner")
    assert added == [
        {"role": [codes.concept("pharmacist", "Pharmacien communautaire")],
         "member": {"reference": f"Organization/{org['id']}"}, "period": {"start": "2026-03-01T10:00:00-05:00"}},
        {"role": [codes.concept("pharmacist", "Pharmacien communautaire")],
         "member": {"reference": f"Practitioner/{pharmacist['id']}"},
         "onBehalfOf": {"reference": f"Organization/{org['id']}"}, "period": {"start": "2026-03-01T10:00:00-05:00"}}]
    validate(published)
    _r, out = feed(rules, dispense("C2", "99100054", "Ramipril", "20260302100000", rx="R2"), "2026-03-02T16:00:00Z")
    assert not [o for o in out if o.topic == "pivot.fhir.CareTeam"]
    _r, out = feed(rules, dispense("C3", "99100054", "Ramipril", "20260303100000", pharmacy="PHARM-LACHUTE",
                                   rx="L2", pharmacist="O-999^Roy^Luc^^^^^^OPQ"), "2026-03-03T16:00:00Z")
    (team2,) = [json.loads(o.value)["resource"] for o in out if o.topic == "pivot.fhir.CareTeam"]
    assert len(team2["participant"]) == 5


def test_the_event_keeps_the_defisante_envelope(rules: PharmacyRules) -> None:
    """The alert events have the fields of schemas/defisante/alert-event.schema.json. The schema needs two
    changes (README): the pharmacy kinds in ``kind`` and an empty ``encounter`` allowed."""
    enrolled(rules)
    _r, out = feed(rules, dispense("V1", *OXY, "20260301100000"), "2026-03-01T16:00:00Z")
    schema = json.loads(SCHEMA.read_text())
    (event,) = alerts(out)
    patched = copy.deepcopy(schema)
    patched["properties"]["kind"]["enum"] = [*schema["properties"]["kind"]["enum"], *KINDS]
    patched["properties"]["encounter"]["pattern"] = "^(Encounter/[A-Za-z0-9\\-\\.]{1,64})?$"
    jsonschema.Draft202012Validator(patched).validate(event)
    assert set(event) == set(schema["required"])
    header = next(o.headers for o in out if o.topic == "pivot.defisante.alerts")
    assert header == {"schema_version": "1", "kind": "pharmacy-high-risk", "msh10": "V1",
                      "sender": "RXPHARM|PHARM-STE-AGATHE"}


def test_logs_carry_ids_never_drugs_or_names(rules: PharmacyRules, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    enrolled(rules)
    feed(rules, dispense("L1", *OXY, "20260301100000"), "2026-03-01T16:00:00Z")
    assert "pharmacy alert kind=pharmacy-high-risk" in caplog.text
    for secret in ("Oxycodone", "Gagnon", "Hélène", "GAGH52561503", "99100001", "N02AA05"):
        assert secret not in caplog.text

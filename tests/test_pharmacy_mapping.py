"""The pharmacy mapping without a gateway: patients by NAM, errors (AE) with their codes and
locations, drug codes (DIN, ATC), days' supply, routes, timing, unmapped segments, determinism."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.errors import MapError, UnsupportedError
from gateway.fhir.models import validate
from gateway.hl7v2 import parse
from gateway.samples import er_message
from mappings import MapContext, map_message, stable_id
from mappings.datatypes.identifiers import NAM_SYSTEM
from mappings.pharmacy import PHARMACY_TRIGGERS, check_pharmacy_supported, codemaps, is_pharmacy
from mappings.pharmacy.codemaps import ATC_SYSTEM, DIN_SYSTEM, SNOMED
from tests.test_pharmacy_support import NAM, PROFILES, SYSTEMS, dispense, map_raw, message, seg

JSON = dict[str, Any]
RXD = seg("RXD", f1="1", f2="99100052^Atorvastatine 20 mg^DIN", f3="20260301", f4="30", f5="CO^comprimé", f7="RX9")
ORC = seg("ORC", f1="RE")  # the ORDER group starts with ORC (required: required-structure.json)


def one(result_resources: list[JSON], rtype: str) -> JSON:
    found = [r for r in result_resources if r["resourceType"] == rtype]
    assert len(found) == 1, rtype
    return found[0]


def error_of(raw: bytes) -> MapError:
    with pytest.raises(MapError) as info:
        map_raw(raw)
    return info.value


def test_triggers_are_data() -> None:
    assert PHARMACY_TRIGGERS == {"RDS": {"O13": "RDS_O13"}, "RDE": {"O11": "RDE_O11", "O25": "RDE_O25"},
                                 "RAS": {"O17": "RAS_O17"}}
    msg = parse(message("RDS^O99", "C1", "PH", [RXD]))
    assert is_pharmacy(msg)
    with pytest.raises(UnsupportedError) as info:
        check_pharmacy_supported(msg)
    assert (info.value.hl7_code, str(info.value.location)) == ("201", "MSH-9.2")
    with pytest.raises(UnsupportedError) as info:
        check_pharmacy_supported(parse(message("ORM^O01", "C1", "PH", [RXD])))
    assert info.value.hl7_code == "200"


def test_a_pharmacy_nam_lands_on_the_hospital_patient() -> None:
    hospital = parse(er_message(3))
    adt = map_message(hospital, MapContext(PROFILES.for_message(hospital), SYSTEMS, datetime(2026, 1, 1, tzinfo=UTC)))
    patient = one(adt.resources, "Patient")
    nam = next(i["value"] for i in patient["identifier"] if i["system"] == NAM_SYSTEM)
    result = map_raw(dispense("C1", "99100052", "Atorvastatine", "20260301", pid=f"{nam}^^^RAMQ^JHN"))
    assert result.patient_id == adt.patient_id == stable_id("Patient", f"{NAM_SYSTEM}|{nam}")
    assert one(result.resources, "MedicationDispense")["subject"] == {"reference": f"Patient/{adt.patient_id}"}


def test_an_unknown_nam_is_accepted_and_keyed_by_the_nam() -> None:
    result = map_raw(dispense("C1", "99100052", "Atorvastatine", "20260301"))
    assert result.patient_id == stable_id("Patient", f"{NAM_SYSTEM}|{NAM}")
    patient = one(result.resources, "Patient")
    assert patient["identifier"] == [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                          "code": "JHN"}]}, "system": NAM_SYSTEM, "value": NAM}]


@pytest.mark.parametrize("pid", ["", "XXXX99999999^^^RAMQ^JHN", "GAGH52569903^^^RAMQ^JHN"])
def test_a_message_without_a_usable_identifier_is_ae_101_at_pid_3(pid: str) -> None:
    err = error_of(message("RDS^O13", "C1", "PH", [ORC, RXD], pid=pid))
    assert (err.ack_code, err.hl7_code, str(err.location)) == ("AE", "101", "PID-3")


def test_a_pharmacy_number_alone_is_usable() -> None:
    result = map_raw(message("RDS^O13", "C1", "PH", [ORC, RXD], pid="445566^^^PH^PI"))
    assert result.patient_id == stable_id("Patient", "urn:pivot:id:PH|445566")


@pytest.mark.parametrize(("kind", "segments", "location"), [
    ("RDS^O13", [seg("ORC", f1="NW", f3="RX1")], "RXD"),
    ("RDE^O11", [seg("ORC", f1="NW", f3="RX1"), RXD], "RXE"),
    ("RAS^O17", [seg("ORC", f1="RE", f3="RX1")], "RXA"),
])
def test_the_structure_segment_is_required(kind: str, segments: list[str], location: str) -> None:
    err = error_of(message(kind, "C1", "PH", segments))
    assert (err.hl7_code, str(err.location)) == ("100", location)


def test_a_profile_may_be_empty_and_pid_is_required() -> None:
    result = map_raw(message("RDS^O13", "C1", "PH", ["ZPR|1|PROFILE|20260301"]))
    prov = one(result.resources, "Provenance")
    assert prov["extension"][-1]["url"] == "urn:pivot:extension:pharmacy-profile"
    raw = b"MSH|^~\\&|RX|PH|P|C|20260301||RDS^O13|C1|P|2.5.1\r" + RXD.encode() + b"\r"
    err = error_of(raw)
    assert (err.hl7_code, str(err.location)) == ("100", "PID")


@pytest.mark.parametrize(("rxd", "code", "where"), [
    ({"f2": "12AB^Drogue^DIN"}, "103", "RXD-2"),
    ({"f2": "123456789^Trop long^DIN"}, "103", "RXD-2"),
    ({"f2": ""}, "101", "RXD-2"),
    ({"f4": "soixante"}, "102", "RXD-4"),
    ({"f4": "3,5"}, "102", "RXD-4"),
    ({"f3": ""}, "101", "RXD-3"),
    ({"f3": "20261301"}, "102", "RXD-3"),
])
def test_bad_dispenses_are_ae_at_their_field(rxd: dict[str, str], code: str, where: str) -> None:
    fields = {"f1": "1", "f2": "99100052^Atorvastatine^DIN", "f3": "20260301", "f4": "30", "f7": "RX1", **rxd}
    err = error_of(message("RDS^O13", "C1", "PH", [ORC, seg("RXD", **fields)]))
    assert (err.ack_code, err.hl7_code, str(err.location)) == ("AE", code, where)


def test_errors_never_carry_field_values() -> None:
    canary = "Zébulon-Canari"
    for fields in ({"f2": f"{canary}^{canary}^DIN"}, {"f4": canary}, {"f3": canary}):
        base = {"f1": "1", "f2": "99100052^x^DIN", "f3": "20260301", "f4": "30", **fields}
        err = error_of(message("RDS^O13", "C1", "PH", [ORC, seg("RXD", **base)], name=f"{canary}^{canary}"))
        assert canary not in err.describe()


def test_unknown_din_policy_reject(monkeypatch: pytest.MonkeyPatch) -> None:
    table = codemaps.din_table()
    monkeypatch.setattr("mappings.pharmacy.datatypes.drugs.din_table",
                        lambda: codemaps.DinTable(table.entries, table.pattern, True, table.synthetic))
    err = error_of(dispense("C1", "02242903", "Inconnu", "20260301"))
    assert (err.hl7_code, str(err.location)) == ("103", "RXD-2")
    assert map_raw(dispense("C1", "99100052", "Atorvastatine", "20260301")).resources  # a known DIN passes


def test_drug_codes_din_atc_from_message_or_table() -> None:
    def concept(raw: bytes) -> JSON:
        return dict(one(map_raw(raw).resources, "MedicationDispense")["medicationCodeableConcept"])

    known = concept(dispense("C1", "99100052", "Atorvastatine 20 mg", "20260301"))
    assert known["coding"] == [{"system": DIN_SYSTEM, "code": "99100052", "display": "Atorvastatine 20 mg"},
                               {"system": ATC_SYSTEM, "code": "C10AA05", "display": "atorvastatin"}]
    assert known["text"] == "Atorvastatine 20 mg"
    sent = concept(dispense("C1", "99100052", "Atorvastatine", "20260301", atc="C10AA07"))
    assert [c["code"] for c in sent["coding"]] == ["99100052", "C10AA07"]  # the message's ATC wins
    unknown = concept(dispense("C1", "2242903", "Inconnu", "20260301"))
    assert unknown["coding"] == [{"system": DIN_SYSTEM, "code": "02242903", "display": "Inconnu"}]  # zero-padded
    hc = concept(message("RDS^O13", "C1", "PH", [ORC, seg("RXD", f2="99100001^Oxy^HC-DIN", f3="20260301", f4="1")]))
    assert hc["coding"][0]["system"] == DIN_SYSTEM
    assert hc["coding"][1]["code"] == "N02AA05"


def test_days_supply_from_tq1_daily_dose_or_the_sig() -> None:
    def days(segments: list[str]) -> Any:
        disp = one(map_raw(message("RDS^O13", "C1", "PH", segments)).resources, "MedicationDispense")
        return disp.get("daysSupply", {}).get("value")

    drug = "99100052^Atorvastatine^DIN"
    assert days([seg("ORC", f1="RE"), seg("TQ1", f3="QD", f6="4^wk"),
                 seg("RXD", f2=drug, f3="20260301", f4="30", f5="CO")]) == 28
    assert days([ORC, seg("RXD", f2=drug, f3="20260301", f4="90", f5="CO^comprimé", f12="3^CO")]) == 30
    assert days([seg("ORC", f1="NW"), seg("TQ1", f3="BID"),
                 seg("RXE", f2=drug, f3="1", f5="CO^comprimé"),
                 seg("RXD", f2=drug, f3="20260301", f4="60", f5="CO^comprimé")]) == 30
    assert days([ORC, seg("RXD", f2=drug, f3="20260301", f4="90", f5="ML", f12="3^CO")]) is None  # units differ


def test_routes_timing_and_priority() -> None:
    result = map_raw(message("RDE^O11", "C1", "PH", [
        seg("ORC", f1="NW", f3="RX1", f9="20260301"),
        seg("RXE", f1="^Q8H&0600^^20260301^^S", f2="99100041^Insuline glargine^DIN", f3="10",
            f5="U^unité^UCUM", f10="1", f11="STYLO^stylo", f15="RX1"),
        "RXR|SC^Sous-cutanée^HL70162|ABD^Abdomen^HL70163",
        "RXR|XYZ^Route inventée",
    ]))
    req = one(result.resources, "MedicationRequest")
    dosage = req["dosageInstruction"][0]
    assert dosage["route"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration", "code": "SQ",
         "display": "Injection, subcutaneous"},
        {"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}]
    assert dosage["timing"]["repeat"] == {"frequency": 1, "period": 8, "periodUnit": "h",
                                          "boundsPeriod": {"start": "2026-03-01"}}
    assert req["priority"] == "stat"
    assert "RXR" in result.unmapped_segments  # the second RXR of the encoded order
    other = map_raw(message("RDE^O11", "C1", "PH",
                            [ORC, seg("RXE", f2="99100041^x^DIN", f15="RX1"), "RXR|XYZ^Inventée"]))
    assert one(other.resources, "MedicationRequest")["dosageInstruction"][0]["route"] == {"text": "Inventée"}


def test_orc21_names_the_pharmacy_and_stops_set_the_validity_end() -> None:
    result = map_raw(message("RDE^O11", "C1", "CENTRAL", [
        seg("ORC", f1="DC", f3="RX1", f9="20260310", f21="Pharmacie du Lac^^^^^PHX^^^^555"),
        seg("RXE", f2="99100011^Lorazépam^DIN", f15="RX1")]))
    req = one(result.resources, "MedicationRequest")
    org = next(r for r in result.resources if r.get("name") == "Pharmacie du Lac")
    assert req["dispenseRequest"]["performer"] == {"reference": f"Organization/{org['id']}"}
    assert req["status"] == "stopped"
    assert "authoredOn" not in req
    assert req["dispenseRequest"]["validityPeriod"] == {"end": "2026-03-10"}


def test_unmapped_segments_are_reported_and_z_segments_kept() -> None:
    result = map_raw(message("RDS^O13", "C1", "PH", ["NTE|1||note", "AL1|1||PEN", seg("ORC", f1="RE"),
                                                     "RXO|x", "RXC|A|x", RXD, "ZXY|1|local"]))
    assert result.unmapped_segments == ["NTE", "AL1", "RXO", "RXC", "ZXY"]
    prov = one(result.resources, "Provenance")
    assert prov["extension"] == [{"url": "urn:pivot:extension:hl7v2-segment", "valueString": "ZXY|1|local"}]


def test_administrations_statuses_and_resources_validate() -> None:
    result = map_raw(message("RAS^O17", "C1", "PH", [
        seg("ORC", f1="RE", f3="RX7"),
        seg("RXA", f1="1", f2="1", f3="20260310143000", f5="99100022^Rispéridone^DIN", f6="25", f7="mg^mg^UCUM",
            f18="REF^Refus^L", f20="RE"),
        seg("RXA", f1="1", f2="2", f3="20260311", f5="99100022^Rispéridone^DIN", f6="25", f21="D")]))
    admins = [r for r in result.resources if r["resourceType"] == "MedicationAdministration"]
    assert [a["status"] for a in admins] == ["not-done", "entered-in-error"]
    assert admins[0]["statusReason"][0]["coding"][0]["code"] == "REF"
    for res in result.resources:
        validate(res)


def test_mapping_is_deterministic_and_resends_keep_the_ids() -> None:
    raw = dispense("C1", "99100052", "Atorvastatine", "20260301")
    assert map_raw(raw).resources == map_raw(raw).resources
    first = map_raw(raw)
    resent = map_raw(dispense("C2-RESENT", "99100052", "Atorvastatine", "20260301"))
    ids = {(r["resourceType"], r["id"]) for r in first.resources if r["resourceType"] != "Provenance"}
    assert ids == {(r["resourceType"], r["id"]) for r in resent.resources if r["resourceType"] != "Provenance"}
    assert one(first.resources, "Provenance")["id"] != one(resent.resources, "Provenance")["id"]


def test_the_demo_sample_lands_on_the_er_sample_patient(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from gateway.pharmacy import samples

    assert samples.main(["--er-sample", "1", "--din", "99100052", "--drug", "Atorvastatine"]) == 0
    result = map_raw(capsysbinary.readouterr().out)
    hospital = parse(er_message(1))
    adt = map_message(hospital, MapContext(PROFILES.for_message(hospital), SYSTEMS, datetime(2026, 1, 1, tzinfo=UTC)))
    assert result.patient_id == adt.patient_id
    assert one(result.resources, "MedicationDispense")["daysSupply"]["value"] == 30

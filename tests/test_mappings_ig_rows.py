"""Issue #12, mapping side: the IG rows that were missing (item 5) and the visit states a message
carries (item 3): PV1-45 -> finished on any trigger, an end before its start dropped with an ACK
warning and a review entry, no Encounter from an update without a visit number."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Origin
from gateway.app import Gateway
from gateway.deadletters import list_deadletters, replay
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import load_settings
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message, stable_id
from tests.e2e_helpers import ack_field
from tests.test_mappings_messages import edit, of, run
from tests.test_pharmacy_support import map_raw, message, seg

JSON = dict[str, Any]
A04 = er_message(4)  # PV1-44 202601010908, visit VHSA500004, DG1 1 and 2
V2 = "http://terminology.hl7.org/CodeSystem/v2-"


def one(result: MapResult, rtype: str) -> JSON:
    (found,) = of(result, rtype)
    return found


def with_segment(raw: bytes, line: str, after: str) -> bytes:
    """``line`` inserted after the first ``after`` segment."""
    segs = raw.decode("utf-8").split("\r")
    i = next(n for n, s in enumerate(segs) if s.startswith(after + "|"))
    return "\r".join([*segs[: i + 1], line, *segs[i + 1:]]).encode("utf-8")


# -- item 5: the IG rows ------------------------------------------------------------------------------
def test_dg1_21_deleted_is_entered_in_error_and_not_a_visit_diagnosis() -> None:
    result = run(edit(A04, "DG1", 21, "D"))  # the first DG1 (E11.9)
    deleted = next(c for c in of(result, "Condition") if c["code"]["coding"][0]["code"] == "E11.9")
    assert deleted["verificationStatus"] == {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error",
        "display": "Entered in Error"}]}
    assert "clinicalStatus" not in deleted
    listed = [d["condition"]["reference"] for d in one(result, "Encounter")["diagnosis"]]
    assert f"Condition/{deleted['id']}" not in listed
    assert len(listed) == 1
    kept = run(edit(A04, "DG1", 21, "A"))  # A (add) and U map to nothing
    assert all("verificationStatus" not in c for c in of(kept, "Condition"))
    assert len(one(kept, "Encounter")["diagnosis"]) == 2


def test_pid_40_telecom_and_pid_9_alias() -> None:
    raw = edit(edit(A04, "PID", 40, "^PRN^PH^^^819^5559999~^NET^Internet^x@example.org"), "PID", 9, "Bouchard^Mimi")
    patient = one(run(raw), "Patient")
    assert patient["telecom"][-2:] == [{"system": "phone", "value": "819 5559999", "use": "home"},
                                       {"system": "email", "value": "x@example.org"}]
    assert patient["name"][0]["use"] == "official"
    assert patient["name"][1] == {"use": "old", "family": "Bouchard", "given": ["Mimi"]}
    nick = one(run(edit(A04, "PID", 9, "Bouchard^Mimi^^^^^N")), "Patient")
    assert nick["name"][1]["use"] == "nickname"  # an alias's own XPN-7 wins


def test_pv2_25_priority_and_pv2_38_mode_of_arrival() -> None:
    enc = one(run(edit(edit(A04, "PV2", 25, "2"), "PV2", 38, "A^Ambulance^HL70430")), "Encounter")
    assert enc["priority"] == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority",
                                           "code": "UR", "display": "urgent"}]}
    assert enc["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/encounter-modeOfArrival",
                                 "valueCoding": {"system": V2 + "0430", "code": "A", "display": "Ambulance"}}]
    odd = one(run(edit(edit(A04, "PV2", 25, "9"), "PV2", 38, "ZZ")), "Encounter")
    assert odd["priority"] == {"text": "9"}
    assert "extension" not in odd  # a Coding cannot carry only text: unknown modes are left out


def test_pv1_11_temporary_location() -> None:
    result = run(edit(A04, "PV1", 11, "RAD^SALLE2^^HSA"))
    enc = one(result, "Encounter")
    temporary = enc["location"][1]
    assert temporary["status"] == "active"
    assert temporary["extension"][0]["url"] == "http://hl7.org/fhir/StructureDefinition/subject-locationClassification"
    assert temporary["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "temporary"
    loc = next(r for r in of(result, "Location") if f"Location/{r['id']}" == temporary["location"]["reference"])
    assert loc["identifier"][0]["value"] == "RAD^SALLE2"
    finished = one(run(edit(edit(A04, "PV1", 11, "RAD^SALLE2^^HSA"), "PV1", 45, "202601011200")), "Encounter")
    assert [x["status"] for x in finished["location"]] == ["completed", "completed"]


def test_nk1_7_keeps_its_text_and_nk1_13_is_the_contact_organization() -> None:
    raw = edit(edit(A04, "NK1", 7, "E^Employeur^HL70131"), "NK1", 13, "Quincaillerie Tremblay^^^^^^^^^QT55")
    result = run(raw)
    person = one(result, "RelatedPerson")
    assert person["relationship"][1] == {"coding": [{"system": V2 + "0131", "code": "E", "display": "Employer"}],
                                         "text": "Employeur"}
    contact = one(result, "Patient")["contact"]
    org = next(r for r in of(result, "Organization") if r.get("name") == "Quincaillerie Tremblay")
    reference = {"reference": f"Organization/{org['id']}", "display": "Quincaillerie Tremblay"}
    assert contact == [{"relationship": [person["relationship"][1]], "organization": reference}]
    local = one(run(edit(A04, "NK1", 7, "ZZ^Voisin")), "RelatedPerson")
    assert local["relationship"][1] == {"text": "Voisin"}


def test_pd1_3_authority_is_the_organization_identifier_system(tmp_path: Path) -> None:
    path = tmp_path / "systems.json"
    path.write_text('{"GMF-LAC": "https://laurentides.example.org/fhir/NamingSystem/gmf"}')
    raw = edit(A04, "PD1", 3, "Clinique du Lac^^^^^GMF-LAC^^^^GMF201")
    msg = parse(raw)
    profiles = Profiles.load(None, "America/Montreal")
    result = map_message(msg, MapContext(profiles.for_message(msg), IdentifierSystems.load(path),
                                         datetime(2026, 1, 1, tzinfo=UTC)))
    org = next(r for r in of(result, "Organization") if r.get("name") == "Clinique du Lac")
    assert org["identifier"] == [{"system": "https://laurentides.example.org/fhir/NamingSystem/gmf", "value": "GMF201"}]
    oid = next(r for r in of(run(edit(A04, "PD1", 3, "Clinique du Lac^^^^^X&2.16.124.10.1&ISO^^^^GMF201")),
                             "Organization") if r.get("name") == "Clinique du Lac")
    assert oid["identifier"][0]["system"] == "urn:oid:2.16.124.10.1"


def test_rxe_9_substitution_uses_table_0167() -> None:
    def substitution(code: str) -> JSON:
        req = next(r for r in map_raw(message("RDE^O11", "C1", "PH", [
            seg("ORC", f1="NW", f3="RX1"), seg("RXE", f2="99100052^Atorvastatine^DIN", f9=code, f15="RX1")])).resources
            if r["resourceType"] == "MedicationRequest")
        return dict(req.get("substitution", {}))
    assert substitution("1") == {"allowedCodeableConcept": {"coding": [{
        "system": V2 + "0167", "code": "1", "display": "Substitution not allowed by prescriber"}]}}
    assert substitution("G")["allowedCodeableConcept"]["coding"][0]["system"] == V2 + "0167"
    assert substitution("") == {}


def test_a_dispense_refers_literally_to_the_request_of_its_order() -> None:
    rde = map_raw(message("RDE^O11", "C1", "PH", [
        seg("ORC", f1="NW", f2="ORD7^CLINIQUE", f3="RX7"), seg("RXE", f2="99100052^Atorvastatine^DIN", f15="RX7")]))
    request = next(r for r in rde.resources if r["resourceType"] == "MedicationRequest")
    for orc in (seg("ORC", f1="RE", f2="ORD7^CLINIQUE", f3="RX7"), seg("ORC", f1="RE", f3="RX7")):
        rds = map_raw(message("RDS^O13", "C2", "PH", [
            orc, seg("RXD", f1="1", f2="99100052^Atorvastatine^DIN", f3="20260301", f4="30", f5="CO", f7="RX7")]))
        dispense = next(r for r in rds.resources if r["resourceType"] == "MedicationDispense")
        assert dispense["authorizingPrescription"][0]["reference"] == f"MedicationRequest/{request['id']}"
        assert dispense["authorizingPrescription"][0]["identifier"]["value"] == "RX7"


# -- item 3: visit states -----------------------------------------------------------------------------
@pytest.mark.parametrize("trigger", ["A01", "A04", "A08", "A02", "A06"])
def test_a_discharge_time_makes_the_visit_finished_on_any_trigger(trigger: str) -> None:
    enc = one(run(edit(er_message(3, trigger=trigger), "PV1", 45, "202601021200")), "Encounter")
    assert enc["status"] == "finished"
    assert enc["period"]["end"] == "2026-01-02T12:00:00-05:00"


def test_cancels_keep_their_status_with_a_discharge_time() -> None:
    assert one(run(edit(er_message(3, trigger="A11"), "PV1", 45, "202601021200")), "Encounter")["status"] == "cancelled"
    a13 = one(run(edit(er_message(3, trigger="A13"), "PV1", 45, "202601021200")), "Encounter")
    assert (a13["status"], "end" in a13.get("period", {})) == ("in-progress", False)


def test_an_end_before_the_start_is_dropped_with_a_warning() -> None:
    result = run(edit(A04, "PV1", 45, "202512311200"))  # PV1-44 is 2026-01-01 09:08
    enc = one(result, "Encounter")
    assert enc["period"] == {"start": "2026-01-01T09:08:00-05:00"}
    assert enc["status"] == "in-progress"
    (warning,) = result.warnings
    assert (warning.hl7_code, warning.location.er7() if warning.location else "") == ("0", "PV1^1^45")
    same_day = run(edit(edit(A04, "PV1", 44, "20260101"), "PV1", 45, "202601010800"))
    assert same_day.warnings == []  # a date-only start is not certainly after the end
    assert run(A04).warnings == []


@pytest.mark.parametrize("trigger", ["A08", "A31"])
def test_an_update_without_a_visit_number_creates_no_encounter(trigger: str) -> None:
    raw = er_message(4, trigger=trigger).decode("utf-8").split("\r")
    raw = [("PV1|1|N" if s.startswith("PV1|") else s) for s in raw]
    result = run("\r".join(raw).encode("utf-8"))
    assert of(result, "Encounter") == []
    assert "PV1" in result.unmapped_segments
    assert all("encounter" not in c for c in of(result, "Condition"))
    if trigger == "A08":  # with its visit number an A08 still maps the visit
        assert one(run(er_message(4, trigger="A08")), "Encounter")["id"] == stable_id(
            "Encounter", "urn:pivot:visit:HSA|VHSA500004")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    yield gw
    gw.close()


def test_the_ack_carries_the_warning_and_a_review_entry_keeps_the_message(gateway: Gateway) -> None:
    raw = edit(A04, "PV1", 45, "202512311200")
    reply = gateway.intake.receive(raw, Origin("test", "per-1"))
    assert reply.code == "AA"
    (ack,) = reply.acks
    assert ack_field(ack, "MSA", 1) == "AA"
    assert ack_field(ack, "ERR", 2) == "PV1^1^45"
    assert ack_field(ack, "ERR", 3).split("^")[0] == "0"
    assert ack_field(ack, "ERR", 4) == "W"
    (review,) = list_deadletters(gateway)
    assert (review.stage, review.control_id, review.raw) == ("warning", "HSA00000004", raw)
    assert "PV1-45" in review.reason
    assert len(gateway.log.read_all(gateway.settings.topic("hl7v2.in"))) == 1  # accepted and stored
    plain = gateway.intake.receive(er_message(6), Origin("test", "per-1"))
    assert b"ERR|" not in plain.acks[0]
    assert len(list_deadletters(gateway)) == 1


def test_warning_err_before_v2_5_uses_err_1() -> None:
    from gateway.errors import Location, MapWarning
    from gateway.hl7v2.ack import build_ack

    msg = parse(A04.replace(b"|P|2.5.1|", b"|P|2.3|", 1))
    ack = build_ack("AA", msg=msg, warnings=[MapWarning("end dropped", location=Location("PV1", 1, 45))])
    assert ack_field(ack, "ERR", 1) == "PV1^1^45^0&Message accepted&HL70357"


def test_a_warning_review_entry_is_not_replayed(gateway: Gateway) -> None:
    """The message behind a warning was accepted: replaying it would apply it twice."""
    from gateway.errors import GatewayError

    raw = edit(A04, "PV1", 45, "202512311200")
    assert gateway.intake.receive(raw, Origin("test", "per-1")).code == "AA"
    (review,) = list_deadletters(gateway)
    with pytest.raises(GatewayError, match="accepted"):
        replay(gateway, review.id)
    assert len(gateway.log.read_all(gateway.settings.topic("hl7v2.in"))) == 1


def test_a_forbidden_dead_letter_is_not_replayed(gateway: Gateway) -> None:
    """A replay carries no sender identity: it must not write what the sender-authority check refused."""
    from gateway.errors import GatewayError

    exc = GatewayError("identifier of an authority the sender does not own")
    gateway.intake._dead(A04, exc, stage="forbidden", sender="HSA", control_id="HSA00000004",
                         origin=Origin("test", "forbidden"))
    (entry,) = list_deadletters(gateway)
    with pytest.raises(GatewayError, match="registration"):
        replay(gateway, entry.id)
    assert gateway.log.read_all(gateway.settings.topic("hl7v2.in")) == []

"""Layers 2 and 3: segment builders, message maps, errors, determinism, configuration."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, Location, MapError, UnsupportedError
from gateway.fhir.models import validate
from gateway.hl7v2 import Message, parse
from gateway.samples import er_message
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, check_supported, map_message, stable_id
from mappings.datatypes.identifiers import NAM_SYSTEM
from mappings.messages.tables import SUPPORTED
from mappings.segments.patient import record_id
from mappings.segments.provenance import Z_SEGMENT_URL

PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
TOPICS = {"Patient", "Encounter", "Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "Condition",
          "Location", "Provenance"}
ALL_TRIGGERS = ("A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28", "A31")


def edit(raw: bytes, sid: str, field: int, new: str) -> bytes:
    """Set field ``field`` of the first ``sid`` segment of a UTF-8 ER7 message."""
    segs = raw.decode("utf-8").split("\r")
    for i, seg in enumerate(segs):
        if seg.startswith(sid + "|"):
            fields = seg.split("|")
            idx = field - 1 if sid == "MSH" else field
            fields += [""] * (idx + 1 - len(fields))
            fields[idx] = new
            segs[i] = "|".join(fields)
            break
    return "\r".join(segs).encode("utf-8")


def drop(raw: bytes, sid: str) -> bytes:
    return "\r".join(s for s in raw.decode("utf-8").split("\r") if not s.startswith(sid + "|")).encode("utf-8")


def run(raw: bytes, received: datetime | None = None) -> MapResult:
    msg = parse(raw)
    when = received or datetime(2026, 1, 1, tzinfo=UTC)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, when))


def sample(i: int, trigger: str) -> bytes:
    """``er_message(i, trigger)``; an A40/A34 gets the MRG its structure requires (MRG-1 a site MRN)."""
    raw = er_message(i, trigger=trigger)
    if trigger not in ("A40", "A34"):
        return raw
    return raw.decode("utf-8").replace("PD1|", "MRG|HSA999^^^HSA^MR\rPD1|", 1).encode("utf-8")


def of(result: MapResult, rtype: str) -> list[dict[str, Any]]:
    return [r for r in result.resources if r["resourceType"] == rtype]


# -- check_supported ---------------------------------------------------------------------------------
@pytest.mark.parametrize("trigger", [*ALL_TRIGGERS, "A40", "A34"])
def test_supported_triggers(trigger: str) -> None:
    check_supported(parse(er_message(1, trigger=trigger)))


def test_unsupported_message_type_is_200_at_msh9() -> None:
    with pytest.raises(UnsupportedError) as err:
        check_supported(parse(er_message(1).replace(b"ADT^A04^ADT_A01", b"ORM^O01^ORM_O01")))
    assert (err.value.hl7_code, err.value.location, err.value.ack_code) == ("200", Location("MSH", 1, 9), "AR")


def test_unsupported_trigger_is_201_at_msh9_2() -> None:
    with pytest.raises(UnsupportedError) as err:
        check_supported(parse(er_message(1, trigger="A18")))
    assert (err.value.hl7_code, err.value.location) == ("201", Location("MSH", 1, 9, 2))


def test_supported_list_is_data() -> None:
    assert set(SUPPORTED) == {"ADT"}
    assert {*ALL_TRIGGERS, "A40"} <= set(SUPPORTED["ADT"])


# -- errors ------------------------------------------------------------------------------------------
def test_missing_pid_is_100() -> None:
    with pytest.raises(MapError) as err:
        run(drop(er_message(1), "PID"))
    assert (err.value.hl7_code, err.value.location) == ("100", Location("PID", 1))


@pytest.mark.parametrize(("sid", "field"), [("PID", 7), ("PV1", 44), ("PV1", 45), ("DG1", 5), ("EVN", 2), ("MSH", 7)])
def test_impossible_timestamps_are_102_at_their_field(sid: str, field: int) -> None:
    with pytest.raises(MapError) as err:
        run(edit(er_message(1), sid, field, "19501345"))
    assert (err.value.hl7_code, err.value.location) == ("102", Location(sid, 1, field))


def test_error_messages_carry_no_field_values() -> None:
    raw = edit(edit(er_message(1), "PID", 5, "Canarygagnon^Zoé"), "PID", 7, "19501345")
    with pytest.raises(MapError) as err:
        run(raw)
    assert "Canary" not in err.value.describe()
    assert "19501345" not in err.value.describe()


def test_pid_without_identifier_is_101() -> None:
    with pytest.raises(MapError) as err:
        run(edit(er_message(1), "PID", 3, ""))
    assert (err.value.hl7_code, err.value.location) == ("101", Location("PID", 1, 3))


# -- determinism and validity ------------------------------------------------------------------------
@pytest.mark.parametrize("trigger", [*ALL_TRIGGERS, "A40"])
def test_map_message_is_pure_and_valid(trigger: str) -> None:
    raw = sample(7, trigger)
    first = run(raw, datetime(2026, 1, 1, tzinfo=UTC))
    second = run(raw, datetime(2031, 6, 1, tzinfo=UTC))
    assert json.dumps(first.resources, sort_keys=True) == json.dumps(second.resources, sort_keys=True)
    assert first.patient_id == second.patient_id
    for res in first.resources:
        validate(res)
        assert res["resourceType"] in TOPICS
        assert res["meta"]["source"] == "urn:pivot:sender:URGENCE:CSSS-ARGENTEUIL-HLA#HLA00000007"
    ids = [(r["resourceType"], r["id"]) for r in first.resources]
    assert len(ids) == len(set(ids))


# -- Patient -----------------------------------------------------------------------------------------
def test_patient_id_from_nam_then_mrn() -> None:
    result = run(er_message(2))
    patient = of(result, "Patient")[0]
    nam = next(i for i in patient["identifier"] if i["system"] == NAM_SYSTEM)
    assert result.patient_id == patient["id"] == stable_id("Patient", f"{NAM_SYSTEM}|{nam['value']}")
    no_nam = run(edit(er_message(2), "PID", 3, "HSA100002^^^HSA^MR"))
    assert no_nam.patient_id == stable_id("Patient", "urn:pivot:id:HSA|HSA100002")
    bad_nam = run(edit(er_message(2), "PID", 3, "HSA100002^^^HSA^MR~XX12^^^RAMQ^JHN"))
    assert bad_nam.patient_id == no_nam.patient_id  # a malformed NAM never drives the id


def test_pid_fields_and_family_doctor() -> None:
    result = run(er_message(0))
    patient = of(result, "Patient")[0]
    assert patient["name"] == [{"use": "official", "family": "Tremblay", "given": ["Jérôme"]}]
    assert patient["gender"] == "male"
    assert patient["birthDate"] == "1940-01-01"
    assert patient["address"][0]["city"] == "Sainte-Agathe-des-Monts"
    doctor = next(p for p in of(result, "Practitioner") if p["name"][0]["family"] == "Bélanger")
    assert {"reference": f"Practitioner/{doctor['id']}"} in patient["generalPractitioner"]
    assert doctor["identifier"][0]["system"].endswith("ca-qc-license-physician")
    gmf = next(o for o in of(result, "Organization") if o.get("name") == "GMF des Laurentides")
    assert {"reference": f"Organization/{gmf['id']}"} in patient["generalPractitioner"]


def test_birth_time_extension() -> None:
    patient = of(run(edit(er_message(0), "PID", 7, "194001010830")), "Patient")[0]
    assert patient["birthDate"] == "1940-01-01"
    assert patient["_birthDate"]["extension"][0]["valueDateTime"] == "1940-01-01T08:30:00-05:00"


def test_nk1_related_person() -> None:
    person = of(run(er_message(0)), "RelatedPerson")[0]
    assert person["relationship"][0]["coding"][0]["code"] == "SPS"
    assert person["patient"]["reference"].startswith("Patient/")


# -- Encounter ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("trigger", "status"), [
    ("A01", "in-progress"), ("A02", "in-progress"), ("A03", "finished"), ("A04", "in-progress"),
    ("A05", "planned"), ("A06", "in-progress"), ("A07", "in-progress"), ("A08", "in-progress"),
    ("A11", "cancelled"), ("A12", "in-progress"), ("A13", "in-progress"),
])
def test_encounter_status_by_trigger(trigger: str, status: str) -> None:
    assert of(run(er_message(3, trigger=trigger)), "Encounter")[0]["status"] == status


def test_a08_status_follows_pv1_45() -> None:
    enc = of(run(edit(er_message(3, trigger="A08"), "PV1", 45, "202601021200")), "Encounter")[0]
    assert enc["status"] == "finished"
    assert enc["period"]["end"] == "2026-01-02T12:00:00-05:00"


@pytest.mark.parametrize("trigger", ["A28", "A31", "A40"])
def test_no_encounter_for_person_and_merge_messages(trigger: str) -> None:
    result = run(sample(3, trigger))
    assert of(result, "Encounter") == []
    assert of(result, "Condition") == [] or trigger != "A40"


def test_er_encounter() -> None:
    result = run(er_message(4))
    enc = of(result, "Encounter")[0]
    assert enc["class"]["code"] == "EMER"
    assert enc["identifier"][0]["value"] == "VHSA500004"
    assert enc["id"] == stable_id("Encounter", "urn:pivot:visit:HSA|VHSA500004")
    assert enc["reasonCode"][0]["coding"][0]["code"] == "E11.9"
    assert enc["participant"][0]["type"][0]["coding"][0]["code"] == "ATND"
    assert enc["location"][0]["status"] == "active"
    assert len(enc["diagnosis"]) == 2
    conditions = of(result, "Condition")
    assert {f"Condition/{c['id']}" for c in conditions} == {d["condition"]["reference"] for d in enc["diagnosis"]}
    assert conditions[0]["code"]["coding"][0]["system"] == "https://fhir.infoway-inforoute.ca/CodeSystem/icd10ca"
    assert conditions[0]["encounter"] == {"reference": f"Encounter/{enc['id']}"}


@pytest.mark.parametrize("klass", ["ff", "INPATIENT", ""])
def test_unmapped_patient_class_is_nullflavor(klass: str) -> None:
    raw = edit(er_message(4), "PV1", 2, klass)
    msg = parse(raw)
    relaxed = replace(PROFILES.for_message(msg), relax=frozenset({"PV1-2"}))  # an empty PV1-2 needs the sender's relax
    enc = of(map_message(msg, MapContext(relaxed, SYSTEMS, datetime(2026, 1, 1, tzinfo=UTC))), "Encounter")[0]
    assert enc["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK",
                            "display": "unknown"}


def test_encounter_id_without_visit_number() -> None:
    raw = edit(er_message(4), "PV1", 19, "")
    result = run(raw)
    enc = of(result, "Encounter")[0]
    assert "identifier" not in enc
    assert enc["id"] == stable_id("Encounter", "patient", str(record_id(of(result, "Patient")[0]["identifier"])),
                                  "202601010908")


# -- MRG ---------------------------------------------------------------------------------------------
def test_a40_merge_links_both_ways() -> None:
    raw = er_message(5, trigger="A40").decode("utf-8").replace("PD1|", "MRG|HSA999^^^HSA^MR\rPD1|", 1)
    result = run(raw.encode("utf-8"))
    survivor, retired = of(result, "Patient")
    assert result.patient_id == survivor["id"]
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert survivor["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]


# -- Provenance --------------------------------------------------------------------------------------
def test_provenance() -> None:
    result = run(er_message(6))
    prov = of(result, "Provenance")[0]
    others = [r for r in result.resources if r["resourceType"] != "Provenance"]
    assert [t["reference"] for t in prov["target"]] == [f"{r['resourceType']}/{r['id']}" for r in others]
    assert prov["recorded"] == "2026-01-01T09:42:00-05:00"  # MSH-7, not the reception time
    assert prov["entity"][0]["what"]["identifier"]["value"] == "HSA00000006"
    assert prov["extension"] == [{"url": Z_SEGMENT_URL, "valueString": "ZPV|1|CIV|ambulance^Arrivée en ambulance"}]
    assert prov["id"] == stable_id("Provenance", "URGENCE|CSSS-SOMMETS-HSA", "HSA00000006")
    assert result.unmapped_segments == ["ZPV"]
    sender = next(o for o in of(result, "Organization") if o["identifier"][0]["system"] == "urn:pivot:sender")
    assert prov["agent"][0]["who"] == {"reference": f"Organization/{sender['id']}"}


# -- configuration -----------------------------------------------------------------------------------
def _msh(app: str, facility: str) -> Message:
    return parse(f"MSH|^~\\&|{app}|{facility}|PIVOT|X|20260101||ADT^A04|1|P|2.5.1\r".encode())


def test_profiles(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"default": {"timezone": "America/Toronto"}, "senders": [
        {"application": "URGENCE", "facility": "HSA", "charset": "8859/1", "site": "S1"},
        {"facility": "HSA", "timezone": "America/Vancouver"}]}))
    profiles = Profiles.load(path, "America/Montreal")
    exact = profiles.for_message(_msh("URGENCE", "HSA"))
    assert (exact.charset, exact.timezone, exact.site) == ("8859/1", "America/Toronto", "S1")
    wild = profiles.for_message(_msh("LABO", "HSA"))
    assert (wild.charset, wild.timezone, wild.site) == (None, "America/Vancouver", "HSA")
    other = profiles.for_message(_msh("X", "HLA"))
    assert (other.timezone, other.site) == ("America/Toronto", "HLA")
    assert Profiles.load(None, "America/Montreal").for_message(_msh("A", "B")).timezone == "America/Montreal"


@pytest.mark.parametrize("bad", [{"default": {"timezone": "Mars/Olympus"}}, {"senders": [{"charset": "klingon"}]},
                                 {"senders": {}}])
def test_bad_profiles_are_config_errors(tmp_path: Path, bad: dict[str, Any]) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError):
        Profiles.load(path, "America/Montreal")


def test_identifier_systems(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"HSA": "https://x.example/mrn",
                                "HLA": {"system": "urn:oid:1.2", "visit_system": "urn:oid:1.3"}}))
    systems = IdentifierSystems.load(path)
    assert systems.system("HSA") == "https://x.example/mrn"
    assert systems.visit_system("HLA") == "urn:oid:1.3"
    assert systems.system("RAMQ") == NAM_SYSTEM
    assert systems.system("ZZ") == "urn:pivot:id:ZZ"
    path.write_text(json.dumps({"HSA": "not a uri"}))
    with pytest.raises(ConfigError):
        IdentifierSystems.load(path)

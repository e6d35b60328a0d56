"""Défi Santé building blocks without a gateway: exclusion rules as data, the person folding of
the register, the candidate window, enrollment parameters, consent semantics, conformance files."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.defisante import codes, conformance
from gateway.defisante.candidates import months_before
from gateway.defisante.config import load_config, parse_rules
from gateway.defisante.enrollment import EnrollRequest, enroll_resources, parse_enroll
from gateway.defisante.register import persons
from gateway.defisante.roster import Enrollment
from gateway.errors import ConfigError, StoreError
from gateway.fhir.models import validate

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas" / "defisante"
ICD = codes.ICD10CA


def _rule(**over: Any) -> dict[str, Any]:
    base = {"id": "r", "enabled": True, "kind": "visit-diagnosis", "match": "any", "systems": [ICD],
            "ranges": [["O00", "O9A"]], "description": "d"}
    return {**base, **over}


def test_the_shipped_rules_load_and_pregnancy_is_on_by_default() -> None:
    config = load_config()
    enabled = {r.id for r in config.enabled()}
    assert "pregnancy" in enabled
    assert {"injury-only", "minor"} <= config.rule_ids
    assert config.enabled([]) == ()
    with pytest.raises(ValueError, match="unknown exclusion rule"):
        config.enabled(["nope"])


@pytest.mark.parametrize("bad", [
    {"kind": "zzz"}, {"match": "some"}, {"systems": []}, {"ranges": [["O9A", "O00"]]}, {"ranges": [["O0", "O9"]]},
    {"enabled": "yes"}, {"kind": "person-age-below", "years": 0}, {"id": ""},
])
def test_malformed_rules_refuse_to_start(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse_rules([_rule(**bad)])


def test_duplicate_rule_ids_refuse_to_start() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        parse_rules([_rule(), _rule()])


def test_icd_ranges_cover_the_chapter_and_nothing_else() -> None:
    (rule,) = parse_rules([_rule()])
    assert all(rule.in_ranges(c) for c in ("O00.0", "O20.9", "o21", "O99.8", "O9A.1"))
    assert not any(rule.in_ranges(c) for c in ("N39.0", "P00", "R07.4", "", "O"))
    assert rule.excludes_visit([(ICD, "J44.1"), (ICD, "O20.0")])  # any
    assert not rule.excludes_visit([("urn:other", "O20.0")])  # another system is not looked at
    (injury,) = parse_rules([_rule(match="all", ranges=[["S00", "T98"]])])
    assert injury.excludes_visit([(ICD, "S93.4"), (ICD, "T14.0")])
    assert not injury.excludes_visit([(ICD, "S93.4"), (ICD, "I50.0")])
    assert not injury.excludes_visit([])


def test_months_before_handles_month_ends_and_years() -> None:
    assert months_before(date(2025, 12, 31), 12) == date(2024, 12, 31)
    assert months_before(date(2025, 3, 31), 1) == date(2025, 2, 28)
    assert months_before(date(2024, 3, 30), 1) == date(2024, 2, 29)
    assert months_before(date(2025, 1, 15), 13) == date(2023, 12, 15)


def _patient(pid: str, *idents: tuple[str, str], link: tuple[str, str] | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid,
                           "identifier": [{"system": s, "value": v} for s, v in idents]}
    if link:
        res["link"] = [{"other": {"reference": f"Patient/{link[1]}"}, "type": link[0]}]
    return res


def test_persons_fold_merges_and_mrn_twins_but_never_two_nams() -> None:
    nam = codes.NAM_SYSTEM
    people, person_of = persons([
        _patient("nam1", ("urn:mrn:HSJ", "1"), (nam, "AAAA00000001")),
        _patient("mrn1", ("urn:mrn:HSJ", "1")),  # the same chart sent without the NAM
        _patient("dup1", ("urn:mrn:HSJ", "9"), link=("replaced-by", "nam1")),  # merged by an A40
        _patient("nam2", ("urn:mrn:HLA", "5"), (nam, "BBBB00000002")),
        _patient("nam3", ("urn:mrn:HLA", "5"), (nam, "CCCC00000003")),  # conflict: never folded
    ])
    assert person_of["mrn1"] == person_of["dup1"] == person_of["nam1"] == "nam1"
    assert people["nam1"].patient_ids == {"nam1", "mrn1", "dup1"}
    assert person_of["nam2"] == "nam2"
    assert person_of["nam3"] == "nam3"


def _params(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


CM = {"name": "caseManager", "valueReference": {"reference": "Practitioner/cm"}}


@pytest.mark.parametrize(("body", "words"), [
    ({"resourceType": "Patient"}, "Parameters"),
    (_params(), "caseManager is required"),
    (_params(CM, {"name": "familyInvolvement", "valueBoolean": True}), "at least one relatedPerson"),
    (_params(CM, {"name": "relatedPerson", "valueReference": {"reference": "RelatedPerson/x"}}),
     "familyInvolvement=false"),
    (_params(CM, {"name": "member", "part": [{"name": "role", "valueCode": "boss"}]}), "part role"),
    (_params(CM, {"name": "start", "valueDateTime": "yesterday"}), "start"),
    (_params({"name": "caseManager", "valueReference": {"reference": "Observation/1"}}), "caseManager"),
    (_params(CM, {"name": "colour", "valueString": "blue"}), "unknown parameter"),
])
def test_enroll_parameters_are_checked(body: dict[str, Any], words: str) -> None:
    with pytest.raises(StoreError, match=words) as info:
        parse_enroll(body)
    assert info.value.status == 400


def _enrolled(family: bool, relatives: list[str]) -> tuple[Enrollment, list[dict[str, Any]]]:
    patient = {"resourceType": "Patient", "id": "p1",
               "generalPractitioner": [{"reference": "Organization/gmf"}, {"reference": "Practitioner/doc"}]}
    req = EnrollRequest(case_manager={"reference": "Practitioner/cm"},
                        members=[("addiction-worker", {"reference": "Practitioner/crd"})],
                        goals=["Moins de visites"], activities=["Visite à domicile"], family_involvement=family,
                        relatives=[{"reference": f"RelatedPerson/{r}"} for r in relatives], start="2026-01-05")
    resources = enroll_resources(patient, req, None, [])
    for res in resources:
        validate(res)
    by = {r["resourceType"]: r for r in resources}
    return Enrollment("p1", by["Flag"], by["CarePlan"], by["CareTeam"], by["Consent"]), resources


def test_enrollment_resources_are_valid_deterministic_and_default_the_family_doctor() -> None:
    client, resources = _enrolled(False, [])
    again = _enrolled(False, [])[1]
    assert resources == again  # same request, same resources: a repeated POST changes nothing
    assert client.flag["id"] == codes.flag_id("p1")
    assert codes.has_code(client.flag["code"], codes.PROGRAM)
    assert client.members("family-doctor") == [{"reference": "Practitioner/doc"}]  # PD1-4 by default
    assert client.members("case-manager") == [{"reference": "Practitioner/cm"}]
    assert client.members("addiction-worker") == [{"reference": "Practitioner/crd"}]
    assert [r["resourceType"] for r in resources].count("Goal") == 1


def test_the_family_is_told_only_who_the_consent_names() -> None:
    refused, _ = _enrolled(False, [])
    assert refused.family_permitted() == []
    agreed, _ = _enrolled(True, ["rp1"])
    assert agreed.family_permitted() == [{"reference": "RelatedPerson/rp1"}]
    assert agreed.consent is not None
    agreed.consent["status"] = "inactive"
    assert agreed.family_permitted() == []


def test_alert_texts_never_give_the_family_the_reason() -> None:
    policy = load_config().alerts
    text = policy.text(codes.FAMILY, site="HSA", arrival="2026-01-05 10:00", reason="SECRET-REASON")
    assert "SECRET-REASON" not in text
    assert "SECRET-REASON" in policy.text(codes.ARRIVAL, site="HSA", arrival="x", reason="SECRET-REASON")


def test_conformance_resources_are_valid_and_define_every_emitted_code() -> None:
    loaded = conformance.resources()
    assert ("CodeSystem", "defi-sante") in loaded
    for url in (codes.CANDIDATE_EXT, codes.FLAG_PROFILE, codes.ALERT_PROFILE):
        assert any(r.get("url") == url for r in loaded.values())
    ops = {r["code"] for r in conformance.of_type("OperationDefinition")}
    assert ops == {"defi-sante-candidates", "defi-sante-enroll", "defi-sante-disenroll", "defi-sante-outcomes"}


def test_the_alert_event_schema_is_a_valid_json_schema() -> None:
    schema = json.loads((SCHEMAS / "alert-event.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)

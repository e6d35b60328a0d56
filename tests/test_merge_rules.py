"""Update semantics (issue #12 item 1): empty keeps, ``""`` deletes, repeating sets replaced only
when sent; the mapping lists explicit nulls beside the resources (MapResult.nulls), never inside.

The rules live in mappings/merge.py (table: mappings/README.md, "Update semantics"); here they are
checked as pure functions, then through the mapping.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.hl7v2.tokenizer import parse
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message, merge

JSON = dict[str, Any]
PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)


def hl7(*segments: str, trigger: str = "A08", when: str = "202601011000") -> MapResult:
    head = (f"MSH|^~\\&|URGENCE|CSSS-SOMMETS-HSA|PIVOT|CISSS|{when}||ADT^{trigger}^ADT_A01|C{when}|P|2.5.1",
            f"EVN|{trigger}|{when}")
    msg = parse(("\r".join((*head, *segments)) + "\r").encode(), None)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2030, 1, 1, tzinfo=UTC)))


def of(result: MapResult, rtype: str) -> JSON:
    return next(r for r in result.resources if r["resourceType"] == rtype)


PV1 = "PV1|1|E|URG^CIV01^1^HSA" + "|" * 16 + "V1^^^HSA^VN"  # PV1-19


# -- the mapping lists explicit nulls ------------------------------------------------------------------
def test_explicit_nulls_are_listed_beside_the_resources_never_inside() -> None:
    result = hl7('PID|1||HSA1^^^HSA^MR||Roy^Luc||19400101|M|||""||""|||""', 'PD1||||""', PV1 + "|" * 16 + '|""')
    patient, encounter = of(result, "Patient"), of(result, "Encounter")
    assert result.nulls[f"Patient/{patient['id']}"] == ["address", "telecom.home", "maritalStatus",
                                                        "generalPractitioner"]
    assert result.nulls[f"Encounter/{encounter['id']}"] == ["hospitalization.dischargeDisposition"]
    assert '""' not in str(result.resources)
    assert "maritalStatus" not in patient


def test_empty_fields_and_null_components_are_not_deletes() -> None:
    # PID-13 '""^^^819' is one null component inside a valued field: not a delete
    result = hl7('PID|1||HSA1^^^HSA^MR||Roy^Luc||19400101|M|||||""^PRN^PH^^^819^5551234', PV1)
    assert result.nulls == {}


# -- the rules, as pure functions ------------------------------------------------------------------------
STORED: JSON = {"resourceType": "Patient", "id": "p", "maritalStatus": {"text": "M"},
                "generalPractitioner": [{"reference": "Practitioner/d"}],
                "telecom": [{"system": "phone", "use": "home", "value": "1"},
                            {"system": "phone", "use": "work", "value": "2"}],
                "birthDate": "1940-01-01", "_birthDate": {"extension": [{"url": "x", "valueDateTime": "t"}]}}


def test_empty_keeps() -> None:
    got = merge.apply(STORED, {}, {"resourceType": "Patient", "id": "p", "gender": "male"}, [], 20, default_ms=10)
    assert got.body["maritalStatus"] == {"text": "M"}
    assert got.body["generalPractitioner"] == [{"reference": "Practitioner/d"}]
    assert got.body["gender"] == "male"
    assert got.changed


def test_null_deletes_and_blocks_an_older_value() -> None:
    got = merge.apply(STORED, {}, {"resourceType": "Patient", "id": "p"}, ["maritalStatus", "telecom.home"], 20,
                      default_ms=10)
    assert "maritalStatus" not in got.body
    assert got.body["telecom"] == [{"system": "phone", "use": "work", "value": "2"}]
    older = merge.apply(got.body, got.times, {"resourceType": "Patient", "id": "p", "maritalStatus": {"text": "S"},
                                              "telecom": [{"system": "phone", "use": "home", "value": "9"}]}, [], 15)
    assert "maritalStatus" not in older.body  # the "" at 20 is newer than the value at 15
    assert [t["value"] for t in older.body["telecom"]] == ["2"]
    assert not older.changed


def test_present_replaces_per_use_and_system() -> None:
    new = {"resourceType": "Patient", "id": "p", "telecom": [{"system": "phone", "use": "home", "value": "3"},
                                                             {"system": "email", "use": "home", "value": "e"}]}
    got = merge.apply(STORED, {}, new, [], 20, default_ms=10)
    assert [(t["use"], t["system"], t["value"]) for t in got.body["telecom"]] == [
        ("home", "phone", "3"), ("work", "phone", "2"), ("home", "email", "e")]


def test_older_message_adds_what_nobody_said_since_only() -> None:
    new = {"resourceType": "Patient", "id": "p", "maritalStatus": {"text": "S"}, "gender": "male"}
    got = merge.apply(STORED, {}, new, [], 5, default_ms=10)
    assert got.body["maritalStatus"] == {"text": "M"}  # said at 10, newer than 5
    assert got.body["gender"] == "male"  # nobody said it
    assert got.times["gender"] == 5


def test_birth_time_goes_with_the_birth_date() -> None:
    got = merge.apply(STORED, {}, {"resourceType": "Patient", "id": "p", "birthDate": "1941-02-02"}, [], 20,
                      default_ms=10)
    assert got.body["birthDate"] == "1941-02-02"
    assert "_birthDate" not in got.body


def test_nested_elements_merge_by_sub_element() -> None:
    enc = {"resourceType": "Encounter", "id": "e", "period": {"start": "s", "end": "e"},
           "hospitalization": {"dischargeDisposition": {"text": "home"}, "admitSource": {"text": "ER"}}}
    new = {"resourceType": "Encounter", "id": "e", "hospitalization": {"admitSource": {"text": "amb"}}}
    got = merge.apply(enc, {}, new, ["period.end"], 20, default_ms=10)
    assert got.body["period"] == {"start": "s"}
    assert got.body["hospitalization"] == {"dischargeDisposition": {"text": "home"}, "admitSource": {"text": "amb"}}


def test_repeating_set_replaced_only_when_sent() -> None:
    enc = {"resourceType": "Encounter", "id": "e", "diagnosis": [{"condition": {"reference": "Condition/1"}}]}
    kept = merge.apply(enc, {}, {"resourceType": "Encounter", "id": "e", "status": "in-progress"}, [], 20)
    assert kept.body["diagnosis"] == enc["diagnosis"]
    new = [{"condition": {"reference": "Condition/2"}}]
    replaced = merge.apply(enc, {}, {"resourceType": "Encounter", "id": "e", "diagnosis": new}, [], 20)
    assert replaced.body["diagnosis"] == new


def test_a_value_wins_over_a_null_of_the_same_message() -> None:
    new = {"resourceType": "Patient", "id": "p", "deceasedBoolean": False}
    got = merge.apply({"resourceType": "Patient", "id": "p", "deceasedDateTime": "x"}, {}, new, ["deceased"], 20)
    assert got.body["deceasedBoolean"] is False
    assert "deceasedDateTime" not in got.body


def test_units_round_trip() -> None:
    assert merge.compose(STORED, merge.units(STORED)) == STORED


def test_unit_names_are_the_units_keys() -> None:
    assert merge.unit_names(STORED) == list(merge.units(STORED))


def test_a_null_pv2_25_priority_is_listed_as_a_delete() -> None:
    result = hl7("PID|1||HSA1^^^HSA^MR||Roy^Luc||19400101|M", PV1, "PV2" + "|" * 25 + '""')
    encounter = of(result, "Encounter")
    assert result.nulls[f"Encounter/{encounter['id']}"] == ["priority"]
    assert "priority" not in encounter

"""Issue #12 item 1, the fields left "read as empty": PV2-38 mode of arrival and NK1-13 organisation
now follow "empty keeps, ``""`` deletes" through the resolver; PID-9, PV1-11 and NK1-7 share their
unit with another field and are not tracked (mappings/README.md, "Update semantics";
mappings/segments/nulls.py).

Each field: a stored value; a later message with the field empty keeps it; an older message with
``""`` does not delete it; a later one does, and an older value cannot bring it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.hl7v2.tokenizer import parse
from gateway.identity import IdentityResolver
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message
from tests.test_identity_survivorship import fields
from tests.test_pharmacy_support import map_raw, message, seg

JSON = dict[str, Any]
PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
PID = "PID|1||HSA1^^^HSA^MR~TREJ40010112^^^RAMQ^JHN||Tremblay^Jérôme||19400101|M"
VISIT = "V1^^^HSA^VN"
_counter = [0]


def adt(when: str, *segments: str, trigger: str = "A08", pid: str = PID) -> MapResult:
    _counter[0] += 1
    head = (f"MSH|^~\\&|URGENCE|CSSS-SOMMETS-HSA|PIVOT|CISSS|{when}||ADT^{trigger}^ADT_A01|N{_counter[0]}|P|2.5.1",
            f"EVN|{trigger}|{when}", pid)
    msg = parse(("\r".join((*head, *segments)) + "\r").encode(), None)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2030, 1, 1, tzinfo=UTC)))


def pv1(values: dict[int, str] | None = None) -> str:
    return fields("PV1", {1: "1", 2: "E", 3: "URG^CIV01^1^HSA", 19: VISIT, **(values or {})})


def nk1(values: dict[int, str]) -> str:
    return fields("NK1", {1: "1", 2: "Roy^Louise", 3: "SPO", **values})


@pytest.fixture
def resolver() -> Iterator[IdentityResolver]:
    resolver = IdentityResolver(None, "")
    yield resolver
    resolver.close()


def stored(resolver: IdentityResolver, result: MapResult, rtype: str) -> JSON:
    out = resolver.resolve(result)
    rid = out.patient_id if rtype == "Patient" else next(
        r["id"] for r in result.resources if r["resourceType"] == rtype)
    found = resolver.index.resource(rtype, str(rid))
    assert found is not None
    return found.body


def arrival(enc: JSON) -> list[str]:
    return [x["valueCoding"]["code"] for x in enc.get("extension", [])]


def employer(patient: JSON) -> list[str]:
    return [c["organization"].get("display", "") for c in patient.get("contact", [])]


def test_pv2_38_mode_of_arrival_null_deletes_empty_keeps(resolver: IdentityResolver) -> None:
    def pv2(mode: str) -> str:
        return fields("PV2", {3: "^Douleur", 38: mode})

    assert arrival(stored(resolver, adt("202601020800", pv1(), pv2("A"), trigger="A04"), "Encounter")) == ["A"]
    assert arrival(stored(resolver, adt("202601020900", pv1(), pv2("")), "Encounter")) == ["A"]  # empty keeps
    assert arrival(stored(resolver, adt("202601010900", pv1(), pv2('""')), "Encounter")) == ["A"]  # older "" loses
    late = adt("202601021000", pv1(), pv2('""'))
    assert "extension" not in next(r for r in late.resources if r["resourceType"] == "Encounter")
    after = stored(resolver, late, "Encounter")
    assert "extension" not in after
    assert after["reasonCode"][0]["text"] == "Douleur"  # the rest of the PV2 stays
    assert arrival(stored(resolver, adt("202601020930", pv1(), pv2("C")), "Encounter")) == []  # older value


def test_nk1_13_organisation_null_deletes_empty_keeps(resolver: IdentityResolver) -> None:
    org = "Pharmacie Roy inc.^^^^^^^^^ORG1"
    assert employer(stored(resolver, adt("202601020800", nk1({13: org}), pv1(), trigger="A04"), "Patient")) == [
        "Pharmacie Roy inc."]
    assert employer(stored(resolver, adt("202601020900", nk1({13: ""}), pv1()), "Patient")) == [
        "Pharmacie Roy inc."]  # empty keeps
    assert employer(stored(resolver, adt("202601010900", nk1({13: '""'}), pv1()), "Patient")) == [
        "Pharmacie Roy inc."]  # an older "" loses
    after = stored(resolver, adt("202601021000", nk1({13: '""'}), pv1()), "Patient")
    assert "contact" not in after
    assert after["name"][0]["family"] == "Tremblay"
    assert employer(stored(resolver, adt("202601020930", nk1({13: org}), pv1()), "Patient")) == []  # older value
    two = adt("202601021100", nk1({13: '""'}), fields("NK1", {1: "2", 2: "Roy^Marc", 3: "BRO",
                                                             13: "Garage Roy^^^^^^^^^ORG2"}), pv1())
    assert employer(stored(resolver, two, "Patient")) == ["Garage Roy"]  # a valued NK1-13 replaces the set


def test_fields_sharing_a_unit_null_alone_delete_nothing(resolver: IdentityResolver) -> None:
    """PV1-11 and NK1-7 ``""`` with their unit's other field empty: deleting the unit would delete
    PV1-3's location or NK1-3's relationship. PID-9 ``""``: PID-5 is required in ADT, so ``name``
    is always sent and replaced (the alias goes, the name stays). Decisions, pinned here."""
    first = adt("202601020800", nk1({7: "EMP"}), pv1({11: "RAD^SALLE1^^HSA"}), trigger="A04",
                pid=PID + "|Tremblay^J^^^^^A")
    assert len(stored(resolver, first, "Patient")["name"]) == 2
    assert len(stored(resolver, first, "Encounter")["location"]) == 2
    later = adt("202601021000", nk1({3: "", 7: '""'}), pv1({3: "", 11: '""'}), pid=PID + '|""')
    assert later.nulls == {}
    assert [n["family"] for n in stored(resolver, later, "Patient")["name"]] == ["Tremblay"]
    assert len(stored(resolver, later, "Encounter")["location"]) == 2
    person = next(r for r in first.resources if r["resourceType"] == "RelatedPerson")
    kept = resolver.index.resource("RelatedPerson", person["id"])
    assert kept is not None
    assert len(kept.body["relationship"]) == 2


# -- pharmacy: the fields that alone fill their element --------------------------------------------------
def _rds(text: str) -> list[str]:
    return [seg("ORC", f1="RE", f3="RX7", f9="20260301103500"),
            seg("RXD", f1="1", f2="02242903^Metformine^DIN", f3="20260301103500", f4="30", f5="CO^comprimé",
                f7="RX7", f9=text)]


def _rde(text: str) -> list[str]:
    return [seg("ORC", f1="NW", f3="RX7", f9="20260301103500"),
            seg("RXE", f2="02242903^Metformine^DIN", f10="30", f11="CO^comprimé", f15="RX7", f27=text)]


def _ras(text: str) -> list[str]:
    return [seg("ORC", f1="RE", f3="RX7"),
            seg("RXA", f1="0", f2="1", f3="20260301103500", f5="02242903^Metformine^DIN", f6="1",
                f7="CO^comprimé", f10=text)]


PHARMACY = {  # field: (message type, segments, resource type, element, a value)
    "RXD-9": ("RDS^O13^RDS_O13", _rds, "MedicationDispense", "note", "^Avec de la nourriture"),
    "RXE-27": ("RDE^O11^RDE_O11", _rde, "MedicationRequest", "reasonCode", "^Diabète"),
    "RXA-10": ("RAS^O17^RAS_O17", _ras, "MedicationAdministration", "performer", "O-12345^Côté^Geneviève^^^^^^OPQ"),
}


@pytest.mark.parametrize("field", sorted(PHARMACY))
def test_pharmacy_field_null_deletes_empty_keeps(resolver: IdentityResolver, field: str) -> None:
    kind, segments, rtype, element, text = PHARMACY[field]

    def send(when: str, sent: str) -> JSON | None:
        _counter[0] += 1
        return stored(resolver, map_raw(message(kind, f"P{_counter[0]}", "PHARM-STE-AGATHE", segments(sent),
                                                when=when)), rtype).get(element)

    first = send("20260301103500", text)
    assert first
    assert send("20260301113500", "") == first  # empty keeps
    assert send("20260301093500", '""') == first  # an older "" loses
    assert send("20260301123500", '""') is None
    assert send("20260301120000", text) is None  # an older value cannot bring it back

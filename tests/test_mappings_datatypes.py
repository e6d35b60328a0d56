"""Layer 1: datatype converters (one IG datatype map each) and the code maps."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from gateway.errors import ConfigError, Location, MapError
from gateway.hl7v2.tokenizer import DEFAULT_DELIMITERS, Rep
from mappings import IdentifierSystems, stable_id
from mappings.codemaps import ALL_CODEMAPS, codemap, parse_codemap
from mappings.datatypes import (
    coding_system,
    cwe_to_codeable_concept,
    cx_to_identifier,
    dtm,
    pl_to_location,
    to_date,
    to_datetime,
    to_instant,
    value,
    well_formed_nam,
    xad_to_address,
    xcn_to_practitioner,
    xon_to_organization,
    xpn_to_human_name,
    xtn_to_contact_point,
)
from mappings.datatypes.identifiers import NAM_SYSTEM
from mappings.datatypes.primitives import BadTimestamp

MTL = ZoneInfo("America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
HERE = Location("PID", 1, 3)


def rep(text: str) -> Rep:
    return Rep(text, DEFAULT_DELIMITERS)


# -- primitives ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [
    ("1950", "1950"),
    ("195003", "1950-03"),
    ("19500314", "1950-03-14"),
    ("2026010108", "2026-01-01T08:00:00-05:00"),
    ("202601010815", "2026-01-01T08:15:00-05:00"),
    ("20260701081530", "2026-07-01T08:15:30-04:00"),  # DST
    ("20260101081530.25", "2026-01-01T08:15:30.25-05:00"),
    ("20260101081530+0200", "2026-01-01T08:15:30+02:00"),
    ("20110613122406637", "2011-06-13T12:24:06.637-04:00"),  # fraction without the dot (LFH quirk)
])
def test_dtm_keeps_precision_and_adds_the_profile_offset(raw: str, expected: str) -> None:
    assert to_datetime(raw, MTL) == expected


@pytest.mark.parametrize("raw", ["19501345", "19500230", "2026010125", "202601011261", "abc", "2026-01-01", "195"])
def test_impossible_dates_are_refused(raw: str) -> None:
    with pytest.raises(BadTimestamp):
        to_datetime(raw, MTL)


def test_dtm_error_is_map_error_102_at_the_field_without_the_value() -> None:
    with pytest.raises(MapError) as err:
        dtm("19501345", MTL, Location("PID", 1, 7))
    assert err.value.hl7_code == "102"
    assert err.value.location == Location("PID", 1, 7)
    assert "19501345" not in err.value.describe()


def test_date_and_instant() -> None:
    assert to_date("19500314120000") == "1950-03-14"
    assert to_instant("20260101", MTL) == "2026-01-01T00:00:00-05:00"
    assert to_instant("202601011230", MTL) == "2026-01-01T12:30:00-05:00"
    with pytest.raises(BadTimestamp):
        to_instant("2026", MTL)


def test_value_reads_the_hl7_null_as_absent_and_cleans_odd_whitespace() -> None:
    assert value('""') == ""
    assert value("  Roy ") == "Roy"
    assert value("Jean\xa0Paul\x0c") == "Jean Paul"
    assert value("a\x00b") == "ab"


# -- CX / NAM ----------------------------------------------------------------------------------------
def test_cx_site_mrn_uses_the_identifier_systems() -> None:
    systems = IdentifierSystems({"HSA": "https://sommets.example.org/mrn"})
    ident = cx_to_identifier(rep("HSA100001^^^HSA^MR"), systems, "HSA", MTL, HERE)
    assert ident == {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                          "display": "Medical record number"}]},
                     "system": "https://sommets.example.org/mrn", "value": "HSA100001"}


def test_cx_unknown_authority_gets_a_stable_urn_never_the_bare_value() -> None:
    ident = cx_to_identifier(rep("123^^^Hôpital X^MR"), SYSTEMS, "HSA", MTL, HERE)
    assert ident is not None
    assert ident["system"] == "urn:pivot:id:H%C3%B4pital%20X"
    assert cx_to_identifier(rep("123"), SYSTEMS, "HSA", MTL, HERE)["system"] == "urn:pivot:id:HSA"  # type: ignore[index]


@pytest.mark.parametrize("text", ["TREJ50010112^^^RAMQ", "TREJ50010112^^^XYZ^JHN", "trej 5001 0112^^^RAMQ^HC"])
def test_nam_by_type_or_authority(text: str) -> None:
    ident = cx_to_identifier(rep(text), SYSTEMS, "HSA", MTL, HERE)
    assert ident is not None
    assert ident["system"] == NAM_SYSTEM
    assert ident["value"] == "TREJ50010112"
    assert ident["type"]["coding"][0]["code"] == "JHN"


def test_cx_oid_authority_and_period() -> None:
    ident = cx_to_identifier(rep("42^^^&2.16.124.1&ISO^PI^^20200101^20251231"), SYSTEMS, "HSA", MTL, HERE)
    assert ident is not None
    assert ident["system"] == "urn:oid:2.16.124.1"
    assert ident["period"] == {"start": "2020-01-01", "end": "2025-12-31"}


def test_cx_without_value_is_none_and_well_formed_nam() -> None:
    assert cx_to_identifier(rep('""^^^HSA^MR'), SYSTEMS, "HSA", MTL, HERE) is None
    assert well_formed_nam("TREJ50010112")
    assert not well_formed_nam("TREJ5001011")


# -- XPN / XAD / XTN ---------------------------------------------------------------------------------
def test_xpn_french_name() -> None:
    assert xpn_to_human_name(rep("Côté^Jérôme^Benoît^Jr^M.^^L")) == {
        "use": "official", "family": "Côté", "given": ["Jérôme", "Benoît"], "prefix": ["M."], "suffix": ["Jr"]}
    assert xpn_to_human_name(rep("^^^^^^L")) is None


def test_xad_address() -> None:
    assert xad_to_address(rep("100 rue Principale^App 2^Sainte-Agathe^QC^J8C 1A1^CA^H")) == {
        "use": "home", "line": ["100 rue Principale", "App 2"], "city": "Sainte-Agathe", "state": "QC",
        "postalCode": "J8C 1A1", "country": "CA"}
    assert xad_to_address(rep("^^^^^^M"))is None


def test_xtn_phone_email_and_cell() -> None:
    assert xtn_to_contact_point(rep("^PRN^PH^^^819^5550001"), "home") == {
        "system": "phone", "value": "819 5550001", "use": "home"}
    assert xtn_to_contact_point(rep("^NET^Internet^a@example.org")) == {"system": "email", "value": "a@example.org"}
    assert xtn_to_contact_point(rep("^PRS^CP^^1^819^5551234^22"))["use"] == "mobile"  # type: ignore[index]
    assert xtn_to_contact_point(rep("(819)555-1212"), "work") == {"system": "phone", "value": "(819)555-1212",
                                                                   "use": "work"}
    assert xtn_to_contact_point(rep("^PRN^PH")) is None


# -- CWE ---------------------------------------------------------------------------------------------
def test_cwe_icd10ca_and_alternate_coding() -> None:
    assert cwe_to_codeable_concept(rep("R07.4^Douleur thoracique^I10CA^123^Chest pain^SCT")) == {
        "coding": [{"system": "https://fhir.infoway-inforoute.ca/CodeSystem/icd10ca", "code": "R07.4",
                    "display": "Douleur thoracique"},
                   {"system": "http://snomed.info/sct", "code": "123", "display": "Chest pain"}]}


def test_coding_system_names() -> None:
    assert coding_system("HL70063") == "http://terminology.hl7.org/CodeSystem/v2-0063"
    assert coding_system("HL7063") == "http://terminology.hl7.org/CodeSystem/v2-0063"
    assert coding_system("LOCAL X") == "urn:pivot:codesystem:LOCAL%20X"
    assert coding_system("") == ""


def test_cwe_text_only_and_empty() -> None:
    assert cwe_to_codeable_concept(rep("^Douleur")) == {"text": "Douleur"}
    assert cwe_to_codeable_concept(rep('""')) is None
    assert cwe_to_codeable_concept(None) is None
    assert cwe_to_codeable_concept(rep("EMR"), "http://terminology.hl7.org/CodeSystem/v2-0069") == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0069", "code": "EMR"}]}


# -- XCN / XON / PL ----------------------------------------------------------------------------------
def test_xcn_family_doctor_with_cmq_licence() -> None:
    doctor = xcn_to_practitioner(rep("1234567^Bélanger^Marie^^^Dre^^^CMQ"), SYSTEMS, "HSA")
    assert doctor is not None
    system = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-license-physician"
    assert doctor["identifier"] == [{"system": system, "value": "1234567"}]
    assert doctor["id"] == stable_id("Practitioner", f"{system}|1234567")
    assert doctor["name"] == [{"family": "Bélanger", "given": ["Marie"], "prefix": ["Dre"]}]
    assert xcn_to_practitioner(rep("^^^^^^^^CMQ"), SYSTEMS, "HSA") is None


def test_xon_gmf_and_pl_location() -> None:
    org = xon_to_organization(rep("GMF des Laurentides^^^^^^^^^GMF123"), SYSTEMS, "HSA")
    assert org is not None
    assert org["identifier"] == [{"system": "urn:pivot:org:HSA", "value": "GMF123"}]
    loc = pl_to_location(rep("URG^CIV01^1^HSA"), "HSA")
    assert loc is not None
    assert loc["identifier"] == [{"system": "urn:pivot:location:HSA", "value": "URG^CIV01^1"}]
    assert loc["physicalType"]["coding"][0]["code"] == "bd"
    assert pl_to_location(rep("^^^HSA"), "HSA") is None


# -- code maps ---------------------------------------------------------------------------------------
def test_every_codemap_loads_with_an_explicit_policy() -> None:
    for name in ALL_CODEMAPS:
        assert codemap(name).mode in {"omit", "fixed", "text"}


def test_codemap_policies() -> None:
    assert codemap("patient-class").get("E").code == "EMER"  # type: ignore[union-attr]
    assert codemap("patient-class").get("ff").code == "UNK"  # type: ignore[union-attr]
    assert codemap("administrative-sex").get("f").code == "female"  # type: ignore[union-attr]
    assert codemap("relationship").concept("ZZZ") == {"text": "ZZZ"}
    assert codemap("name-use").get("ZZ") is None


def test_bad_codemap_is_refused_at_load() -> None:
    with pytest.raises(ConfigError):
        parse_codemap("x", {"target": "", "unmapped": {"mode": "guess"}, "elements": {}})
    with pytest.raises(ConfigError):
        parse_codemap("x", {"target": "", "unmapped": {"mode": "omit"}, "elements": {"A": {"display": "no code"}}})

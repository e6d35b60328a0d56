"""Unit tests of the identity resolver (in-memory index; messages from tests/test_identity_messages.py).

Policy under test (gateway/identity/README.md): the NAM is authoritative, a site MRN + authority
names one record, names and birth dates never merge anyone; links, merges, stale writes, cancels as
reversals, possible duplicates as Flags; the output is the same when a message is resolved again.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.bundle import message_bundle, patient_key
from gateway.errors import MapError
from gateway.fhir.models import validate
from gateway.identity import IdentityResolver
from gateway.identity.keys import demographic_digest, nam_person_id
from mappings import MapResult, stable_id
from mappings.datatypes.identifiers import valid_nam
from tests.test_identity_messages import NAM_SYSTEM, adt, mapped, mrn_system

NAM = "TREJ40010112"
OTHER_NAM = "GAGH45552299"
JSON = dict[str, Any]


@pytest.fixture
def resolver(state_url: str) -> Iterator[IdentityResolver]:
    """On both engines: in memory (SQLite) and a fresh PostgreSQL database (PIVOT_STATE_URL)."""
    resolver = IdentityResolver(None, state_url)
    yield resolver
    resolver.close()


def of(result: MapResult, rtype: str) -> list[JSON]:
    return [r for r in result.resources if r["resourceType"] == rtype]


def active_patient(result: MapResult) -> JSON:
    found = [p for p in of(result, "Patient") if p.get("active") is not False]
    assert len(found) == 1, found
    return found[0]


def keys(patient: JSON) -> list[str]:
    return [f"{i['system']}|{i['value']}" for i in patient["identifier"]]


def mrn_id(site: str, mrn: str) -> str:
    return stable_id("Patient", f"{mrn_system(site)}|{mrn}")


def run(resolver: IdentityResolver, raw: bytes) -> MapResult:
    result = resolver.resolve(mapped(raw))
    for res in result.resources:
        validate(res)
    return result


# -- the NAM -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("nam", "ok"), [
    ("TREJ40010112", True), ("TREA50611410", True), ("GAGH45552299", True), ("tREJ 4001 0112", True),
    ("TREJ40022912", True),   # 29 February of a year multiple of 4
    ("TREJ41022912", False),  # no 29 February in 1941/2041
    ("TREJ40130112", False),  # month 13
    ("TREJ40630112", False),  # month 63 (women: 51–62)
    ("TREJ40500112", False),  # month 50
    ("TREJ40013212", False),  # day 32
    ("TREJ40043112", False),  # 31 April
    ("TREJ40010012", False),  # day 00
    ("TRE140010112", False), ("TREJ4001011", False), ("TREJX0010112", False),
])
def test_valid_nam(nam: str, ok: bool) -> None:
    assert valid_nam(nam) is ok


def test_invalid_nam_is_not_an_identity_key_and_is_dropped(resolver: IdentityResolver) -> None:
    result = run(resolver, adt("A04", site="HSA", mrn="HSA1", nam="TREJ40130112", visit="V1", control_id="1",
                               when="202601010800"))
    patient = active_patient(result)
    assert patient["id"] == mrn_id("HSA", "HSA1")
    assert keys(patient) == [f"{mrn_system('HSA')}|HSA1"]


def test_a_message_whose_only_identifier_is_an_invalid_nam_is_refused(resolver: IdentityResolver) -> None:
    raw = adt("A04", site="HSA", mrn="HSA1", control_id="1", when="202601010800").replace(
        b"HSA1^^^HSA^MR", b"TREJ40130112^^^RAMQ^JHN")
    with pytest.raises(MapError) as err:
        resolver.resolve(mapped(raw))
    assert (err.value.hl7_code, str(err.value.location)) == ("102", "PID-3")


# -- one person, several sites -------------------------------------------------------------------------
def test_same_nam_at_two_sites_is_one_patient_with_every_identifier(resolver: IdentityResolver) -> None:
    first = run(resolver, adt("A04", site="HSA", mrn="HSA1", nam=NAM, visit="V1", control_id="1",
                              when="202601010800"))
    second = run(resolver, adt("A04", site="HLA", mrn="HLA7", nam=NAM, visit="V2", control_id="2",
                               when="202601020800"))
    person = nam_person_id(NAM)
    assert first.patient_id == second.patient_id == person
    patient = active_patient(second)
    assert keys(patient) == [f"{NAM_SYSTEM}|{NAM}", f"{mrn_system('HLA')}|HLA7", f"{mrn_system('HSA')}|HSA1"]
    assert of(second, "Encounter")[0]["subject"] == {"reference": f"Patient/{person}"}
    # a later message of site A alone (no NAM) still names the same person, with all identifiers
    third = run(resolver, adt("A08", site="HSA", mrn="HSA1", visit="V1", control_id="3", when="202601030800"))
    assert third.patient_id == person
    assert len(keys(active_patient(third))) == 3


def test_names_and_birth_dates_never_merge_anyone(resolver: IdentityResolver) -> None:
    a = run(resolver, adt("A04", site="HSA", mrn="HSA1", visit="V1", control_id="1", when="202601010800"))
    b = run(resolver, adt("A04", site="HLA", mrn="HLA1", visit="V2", control_id="2", when="202601010900"))
    assert a.patient_id != b.patient_id
    assert len(keys(active_patient(b))) == 1


def test_nam_arriving_later_links_the_site_record(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA1", nam=NAM, visit="V1", control_id="1", when="202601010800"))
    site_only = run(resolver, adt("A04", site="HSJ", mrn="HSJ5", visit="V3", control_id="2", when="202601020800"))
    q = mrn_id("HSJ", "HSJ5")
    assert site_only.patient_id == q
    flag = of(site_only, "Flag")[0]  # same name, birth date and sex, only one NAM: listed, not merged
    assert flag["status"] == "active"
    linked = run(resolver, adt("A08", site="HSJ", mrn="HSJ5", nam=NAM, visit="V3", control_id="3",
                               when="202601020900"))
    person = nam_person_id(NAM)
    assert linked.patient_id == person
    survivor = active_patient(linked)
    assert f"{mrn_system('HSJ')}|HSJ5" in keys(survivor)
    assert survivor["link"] == [{"other": {"reference": f"Patient/{q}"}, "type": "replaces"}]
    retired = next(p for p in of(linked, "Patient") if p["id"] == q)
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{person}"}, "type": "replaced-by"}]
    assert [e["subject"]["reference"] for e in of(linked, "Encounter")] == [f"Patient/{person}"]
    assert of(linked, "Flag")[0]["status"] == "inactive"
    # the retired MRN later: the person, never the retired record
    later = run(resolver, adt("A04", site="HSJ", mrn="HSJ5", visit="V4", control_id="4", when="202601050800"))
    assert later.patient_id == person
    assert [p["id"] for p in of(later, "Patient")] == [person]


def test_conflicting_nam_is_refused_and_changes_nothing(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA1", nam=NAM, visit="V1", control_id="1", when="202601010800"))
    with pytest.raises(MapError) as err:
        resolver.resolve(mapped(adt("A08", site="HSA", mrn="HSA1", nam=OTHER_NAM, visit="V1", control_id="2",
                                    when="202601020800")))
    assert (err.value.hl7_code, str(err.value.location)) == ("205", "PID-3")
    assert NAM not in err.value.describe()
    assert OTHER_NAM not in err.value.describe()
    assert "HSA1" not in err.value.describe()
    again = run(resolver, adt("A08", site="HSA", mrn="HSA1", visit="V1", control_id="3", when="202601030800"))
    assert keys(active_patient(again))[0] == f"{NAM_SYSTEM}|{NAM}"
    assert resolver.index.person_of_key(f"{NAM_SYSTEM}|{OTHER_NAM}") is None


def test_two_nams_in_one_pid_are_refused(resolver: IdentityResolver) -> None:
    raw = adt("A04", site="HSA", mrn="HSA1", nam=NAM, extra_pid3=f"{OTHER_NAM}^^^RAMQ^JHN", control_id="1",
              when="202601010800")
    with pytest.raises(MapError) as err:
        resolver.resolve(mapped(raw))
    assert err.value.hl7_code == "205"


def test_two_site_records_of_different_people_in_one_pid_are_refused(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA1", control_id="1", when="202601010800"))
    run(resolver, adt("A04", site="HSA", mrn="HSA2", family="Roy", control_id="2", when="202601010900"))
    with pytest.raises(MapError) as err:
        resolver.resolve(mapped(adt("A08", site="HSA", mrn="HSA1", extra_pid3="HSA2^^^HSA^MR", control_id="3",
                                    when="202601011000")))
    assert err.value.hl7_code == "205"


# -- merges -------------------------------------------------------------------------------------------
def _two_records(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA2", visit="V4", control_id="1", when="202601010800"))
    run(resolver, adt("A04", site="HSA", mrn="HSA3", visit="V5", control_id="2", when="202601020800"))


def test_a40_retires_the_record_and_moves_its_encounters(resolver: IdentityResolver) -> None:
    _two_records(resolver)
    merged = run(resolver, adt("A40", site="HSA", mrn="HSA2", mrg="HSA3", control_id="3", when="202601030800"))
    survivor, retired = mrn_id("HSA", "HSA2"), mrn_id("HSA", "HSA3")
    assert merged.patient_id == survivor
    patient = active_patient(merged)
    assert {"use": "old", "system": mrn_system("HSA"), "value": "HSA3"}.items() <= next(
        i for i in patient["identifier"] if i["value"] == "HSA3").items()
    assert patient["link"] == [{"other": {"reference": f"Patient/{retired}"}, "type": "replaces"}]
    old = next(p for p in of(merged, "Patient") if p["id"] == retired)
    assert old["active"] is False
    assert old["link"][0]["type"] == "replaced-by"
    assert {e["subject"]["reference"] for e in of(merged, "Encounter")} == {f"Patient/{survivor}"}
    # each record's possible-duplicate Flag (one per record), resolved
    assert [f["status"] for f in of(merged, "Flag")] == ["inactive", "inactive"]
    prov = of(merged, "Provenance")[0]
    assert {"reference": f"Patient/{retired}"} in prov["target"]
    # a later message for the retired MRN neither revives it nor splits the person
    later = run(resolver, adt("A08", site="HSA", mrn="HSA3", visit="V5", control_id="4", when="202601040800"))
    assert later.patient_id == survivor
    assert [p["id"] for p in of(later, "Patient")] == [survivor]
    assert of(later, "Encounter")[0]["subject"] == {"reference": f"Patient/{survivor}"}


def test_a40_of_an_unknown_record_still_publishes_it_retired(resolver: IdentityResolver) -> None:
    merged = run(resolver, adt("A40", site="HSA", mrn="HSA2", mrg="HSA9", control_id="1", when="202601030800"))
    retired = next(p for p in of(merged, "Patient") if p["id"] == mrn_id("HSA", "HSA9"))
    assert retired["active"] is False
    later = run(resolver, adt("A04", site="HSA", mrn="HSA9", visit="V9", control_id="2", when="202601040800"))
    assert later.patient_id == mrn_id("HSA", "HSA2")


def test_a40_keeps_the_nam_person_as_survivor(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA2", visit="V4", control_id="1", when="202601010800"))
    run(resolver, adt("A04", site="HSA", mrn="HSA3", nam=NAM, visit="V5", control_id="2", when="202601020800"))
    merged = run(resolver, adt("A40", site="HSA", mrn="HSA2", mrg="HSA3", control_id="3", when="202601030800"))
    assert merged.patient_id == nam_person_id(NAM)
    assert keys(active_patient(merged))[0] == f"{NAM_SYSTEM}|{NAM}"


def test_a40_of_two_people_with_different_nams_is_refused(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA2", nam=NAM, control_id="1", when="202601010800"))
    run(resolver, adt("A04", site="HSA", mrn="HSA3", nam=OTHER_NAM, control_id="2", when="202601020800"))
    with pytest.raises(MapError) as err:
        resolver.resolve(mapped(adt("A40", site="HSA", mrn="HSA2", mrg="HSA3", control_id="3",
                                    when="202601030800")))
    assert (err.value.hl7_code, str(err.value.location)) == ("205", "MRG-1")


def test_a34_merges_like_a40(resolver: IdentityResolver) -> None:
    _two_records(resolver)
    merged = run(resolver, adt("A34", site="HSA", mrn="HSA2", mrg="HSA3", control_id="3", when="202601030800"))
    assert len([p for p in of(merged, "Patient") if p.get("active") is False]) == 1


# -- stale writes ---------------------------------------------------------------------------------------
def test_older_message_never_overwrites_newer_state(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA1", nam=NAM, visit="V1", control_id="1", when="202601010800"))
    run(resolver, adt("A08", site="HSA", mrn="HSA1", nam=NAM, family="Tremblay-Roy", visit="V1", control_id="3",
                      when="202601011000"))
    late = run(resolver, adt("A08", site="HSA", mrn="HSA1", nam=NAM, family="Tremblay", visit="V1", control_id="2",
                             when="202601010900"))
    assert of(late, "Patient") == []
    assert of(late, "Encounter") == []
    assert len(of(late, "Provenance")) == 1
    # an older message from another site still adds its identifier, on the newer demographics
    late_site = run(resolver, adt("A28", site="HLA", mrn="HLA1", nam=NAM, family="Tremblay", control_id="4",
                                  when="202601010930"))
    patient = active_patient(late_site)
    assert patient["name"][0]["family"] == "Tremblay-Roy"
    assert f"{mrn_system('HLA')}|HLA1" in keys(patient)


# -- cancels as reversals --------------------------------------------------------------------------------
def test_a11_cancels_the_visit(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA1", visit="V1", control_id="1", when="202601010800"))
    enc = of(run(resolver, adt("A11", site="HSA", mrn="HSA1", visit="V1", location="", control_id="2",
                               when="202601010830")), "Encounter")[0]
    assert enc["status"] == "cancelled"
    assert enc["period"]["start"].startswith("2026-01-01T08:00")  # kept from the registration
    assert {loc["status"] for loc in enc["location"]} == {"completed"}


def test_a11_without_visit_number_cancels_the_latest_visit_at_that_site(resolver: IdentityResolver) -> None:
    first = run(resolver, adt("A04", site="HSA", mrn="HSA1", control_id="1", when="202601010800"))
    visit = of(first, "Encounter")[0]["id"]
    cancel = run(resolver, adt("A11", site="HSA", mrn="HSA1", control_id="2", when="202601010830"))
    enc = of(cancel, "Encounter")[0]
    assert (enc["id"], enc["status"]) == (visit, "cancelled")
    assert {"reference": f"Encounter/{visit}"} in of(cancel, "Provenance")[0]["target"]


def test_a13_reverses_the_discharge(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA1", visit="V1", control_id="1", when="202601010800"))
    done = of(run(resolver, adt("A03", site="HSA", mrn="HSA1", visit="V1", disposition="01", control_id="2",
                                when="202601011200")), "Encounter")[0]
    assert done["status"] == "finished"
    assert "end" in done["period"]
    assert "dischargeDisposition" in done["hospitalization"]
    back = of(run(resolver, adt("A13", site="HSA", mrn="HSA1", visit="V1", disposition="01", control_id="3",
                                when="202601011300")), "Encounter")[0]
    assert back["status"] == "in-progress"
    assert "end" not in back["period"]
    assert back["period"]["start"].startswith("2026-01-01T08:00")
    assert "dischargeDisposition" not in back.get("hospitalization", {})
    assert back["location"][0]["status"] == "active"


def test_a12_puts_the_patient_back_where_they_were(resolver: IdentityResolver) -> None:
    first = run(resolver, adt("A04", site="HSA", mrn="HSA1", visit="V1", control_id="1", when="202601010800"))
    before = of(first, "Encounter")[0]["location"][0]["location"]
    moved = of(run(resolver, adt("A02", site="HSA", mrn="HSA1", visit="V1", location="CHIR^204^2",
                                 prior="URG^CIV01^1", control_id="2", when="202601010900")), "Encounter")[0]
    assert [loc["status"] for loc in moved["location"]] == ["active", "completed"]
    # an A12 whose PV1-3 is empty: back to the location the transfer marked as prior (its PV1-6)
    back = of(run(resolver, adt("A12", site="HSA", mrn="HSA1", visit="V1", location="", control_id="3",
                                when="202601011000")), "Encounter")[0]
    assert back["location"] == [{"location": before, "status": "active"}]
    assert back["status"] == "in-progress"


def test_a12_with_pv1_3_restores_that_location(resolver: IdentityResolver) -> None:
    run(resolver, adt("A02", site="HSA", mrn="HSA1", visit="V1", location="CHIR^204^2", prior="URG^CIV01^1",
                      control_id="1", when="202601010900"))
    back = of(run(resolver, adt("A12", site="HSA", mrn="HSA1", visit="V1", location="URG^CIV01^1",
                                prior="CHIR^204^2", control_id="2", when="202601011000")), "Encounter")[0]
    assert len(back["location"]) == 1
    assert back["location"][0]["status"] == "active"


# -- idempotency --------------------------------------------------------------------------------------
def test_resolving_the_same_message_again_gives_the_same_output(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA2", visit="V4", control_id="1", when="202601010800"))
    run(resolver, adt("A04", site="HSA", mrn="HSA3", visit="V5", control_id="2", when="202601020800"))
    raw = adt("A40", site="HSA", mrn="HSA2", mrg="HSA3", control_id="3", when="202601030800")
    first = run(resolver, raw)
    run(resolver, adt("A04", site="HLA", mrn="HLA1", family="Roy", control_id="4", when="202601040800"))
    again = run(resolver, raw)  # e.g. the mapping worker after the intake, cache evicted
    assert json.dumps(first.resources, sort_keys=True) == json.dumps(again.resources, sort_keys=True)


def test_replaying_the_feed_changes_no_patient_or_encounter(resolver: IdentityResolver) -> None:
    feed = [
        adt("A04", site="HSJ", mrn="HSJ5", visit="V3", control_id="1", when="202601020800"),
        adt("A08", site="HSJ", mrn="HSJ5", nam=NAM, visit="V3", control_id="2", when="202601020900"),
        adt("A11", site="HSJ", mrn="HSJ5", visit="V3", control_id="3", when="202601021000"),
    ]
    state: dict[tuple[str, str], JSON] = {}
    for raw in feed:
        for res in run(resolver, raw).resources:
            state[(res["resourceType"], res["id"])] = res
    for _ in range(2):
        for raw in feed:
            for res in run(resolver, raw).resources:
                if res["resourceType"] in ("Patient", "Encounter", "Flag"):
                    assert res == state[(res["resourceType"], res["id"])], res["resourceType"]


# -- possible duplicates ----------------------------------------------------------------------------------
def test_possible_duplicates_are_listed_never_merged(resolver: IdentityResolver) -> None:
    a = run(resolver, adt("A04", site="HSA", mrn="HSA4", family="Côté", given="Élise", birth="19500505", sex="F",
                          control_id="1", when="202601010800"))
    b = run(resolver, adt("A04", site="HLA", mrn="HLA4", family="COTE", given="Elise", birth="19500505", sex="F",
                          control_id="2", when="202601010900"))
    assert a.patient_id != b.patient_id
    flag = of(b, "Flag")[0]
    assert flag["status"] == "active"
    assert flag["identifier"][0]["system"] == "urn:pivot:identity:possible-duplicate"
    assert {flag["subject"]["reference"], flag["extension"][0]["valueReference"]["reference"]} == {
        f"Patient/{a.patient_id}", f"Patient/{b.patient_id}"}
    # one Flag per record, each naming the other look-alike
    listed = resolver.duplicates()
    assert {(d.patient_a, d.patient_b) for d in listed} == {(a.patient_id, b.patient_id),
                                                            (b.patient_id, a.patient_id)}
    assert all(d.sites_a and d.sites_b and d.active for d in listed)
    # two people with different NAMs are never listed
    run(resolver, adt("A04", site="HSA", mrn="HSA5", nam=NAM, family="Roy", control_id="3", when="202601011000"))
    c = run(resolver, adt("A04", site="HLA", mrn="HLA5", nam="ROYJ40010199", family="Roy", control_id="4",
                          when="202601011100"))
    assert of(c, "Flag") == []
    assert len(resolver.duplicates()) == 2


def test_demographic_digest_ignores_accents_and_case() -> None:
    one = {"name": [{"family": "Côté-Gélinas", "given": ["Élise"]}], "birthDate": "1950-05-05", "gender": "female"}
    two = {"name": [{"family": "cote gelinas", "given": ["ELISE", "Marie"]}], "birthDate": "1950-05-05",
           "gender": "female"}
    assert demographic_digest(one) == demographic_digest(two) is not None
    assert demographic_digest({"name": [{"family": "Roy"}], "birthDate": "1950"}) is None


# -- delivery of linked patients ------------------------------------------------------------------------
def test_bundle_puts_retired_records_by_id_and_the_survivor_by_its_nam(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSJ", mrn="HSJ5", visit="V3", control_id="1", when="202601020800"))
    linked = run(resolver, adt("A08", site="HSJ", mrn="HSJ5", nam=NAM, visit="V3", control_id="2",
                               when="202601020900"))
    bundle = message_bundle(linked.resources, sender=linked.sender, control_id=linked.control_id)
    urls = {e["resource"]["id"]: e["request"]["url"] for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"}
    assert urls[mrn_id("HSJ", "HSJ5")] == f"Patient/{mrn_id('HSJ', 'HSJ5')}"
    assert urls[nam_person_id(NAM)].startswith("Patient?identifier=")
    assert NAM in urls[nam_person_id(NAM)]
    assert patient_key(bundle) == nam_person_id(NAM).encode()


# -- persistence --------------------------------------------------------------------------------------
def test_index_file_is_private_and_survives_a_restart(tmp_path: Path) -> None:
    first = IdentityResolver(tmp_path)
    run(first, adt("A04", site="HSA", mrn="HSA1", nam=NAM, control_id="1", when="202601010800"))
    first.close()
    path = tmp_path / "identity.sqlite"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = IdentityResolver(tmp_path)
    try:
        later = run(second, adt("A04", site="HLA", mrn="HLA1", nam=NAM, control_id="2", when="202601020800"))
        assert len(keys(active_patient(later))) == 3
    finally:
        second.close()


def test_rebuild_gives_the_same_index(resolver: IdentityResolver) -> None:
    feed = [
        adt("A04", site="HSA", mrn="HSA4", family="Côté", control_id="1", when="202601010800"),
        adt("A04", site="HLA", mrn="HLA4", family="Côté", control_id="2", when="202601010900"),
        adt("A04", site="HSA", mrn="HSA1", nam=NAM, control_id="3", when="202601011000"),
        adt("A08", site="HSA", mrn="HSA4", nam=NAM, control_id="4", when="202601011100"),
    ]
    for raw in feed:
        run(resolver, raw)
    before = (resolver.duplicates(include_resolved=True), resolver.index.active_persons())
    resolved, refused = resolver.rebuild([mapped(raw) for raw in feed])
    assert (resolved, refused) == (4, 0)
    assert (resolver.duplicates(include_resolved=True), resolver.index.active_persons()) == before


def test_flags_are_valid_fhir(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA4", control_id="1", when="202601010800"))
    result = run(resolver, adt("A04", site="HLA", mrn="HLA4", control_id="2", when="202601010900"))
    for flag in of(result, "Flag"):
        validate(flag)
    assert of(result, "Flag")


def test_the_message_own_encounter_comes_first(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSJ", mrn="HSJ5", visit="V3", control_id="1", when="202601020800"))
    linked = run(resolver, adt("A04", site="HSJ", mrn="HSJ5", nam=NAM, visit="V9", control_id="2",
                               when="202601030800"))
    assert [e["identifier"][0]["value"] for e in of(linked, "Encounter")] == ["V9", "V3"]


# -- cost per message (issue #14) -------------------------------------------------------------------
class _CountingTx:
    def __init__(self, tx: Any, seen: list[str]) -> None:
        self.tx, self.seen = tx, seen

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.seen.append(sql)
        return self.tx.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> None:
        self.seen.append(sql)
        self.tx.executemany(sql, rows)


def _statements(resolver: IdentityResolver) -> list[str]:
    """Every statement the index sends from now on (an ``executemany`` counts once)."""
    seen: list[str] = []
    inner = resolver.index.db.transaction

    @contextlib.contextmanager
    def counting(lock: str | None = None) -> Iterator[Any]:
        with inner(lock=lock) as tx:
            yield _CountingTx(tx, seen)

    resolver.index.db.transaction = counting  # type: ignore[method-assign]
    return seen


_WRITES = ("INSERT INTO resource", "INSERT INTO ident", "INSERT INTO person", "UPDATE person", "INSERT INTO cluster")


def test_a_new_patient_takes_few_statements_and_a_resend_writes_nothing(resolver: IdentityResolver) -> None:
    run(resolver, adt("A04", site="HSA", mrn="HSA2", nam=NAM, visit="V1", control_id="1", when="202601010800"))
    seen = _statements(resolver)
    raw = adt("A04", site="HLA", mrn="HLA7", family="Roy", visit="V2", control_id="2", when="202601020800")
    first = run(resolver, raw)
    assert len(seen) <= 11, seen  # was 16: reads by IN lists, writes sent together, no re-reads
    assert sum(s.startswith(("INSERT INTO resource", "INSERT INTO ident")) for s in seen) <= 2, seen
    seen.clear()
    again = run(resolver, raw)
    assert [s for s in seen if s.startswith(_WRITES)] == []  # unchanged rows are not written again
    assert len(seen) <= 9, seen
    assert json.dumps(first.resources, sort_keys=True) == json.dumps(again.resources, sort_keys=True)
    seen.clear()
    later = run(resolver, adt("A08", site="HLA", mrn="HLA7", family="Roy", given="Luc", visit="V2", control_id="3",
                              when="202601030800"))
    assert active_patient(later)["name"][0]["given"] == ["Luc"]
    assert any(s.startswith("INSERT INTO resource") for s in seen)  # a change is written

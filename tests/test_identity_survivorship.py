"""Issue #12 items 1–3 and 6 at the resolver: a stream of ordinary messages keeps the record right.

One golden record per person, per element the newest statement by event time across sites; empty
keeps, ``""`` deletes; stale writes per element; the visit's state machine; look-alikes as
clusters with bounded work (gateway/identity/README.md, "Survivorship", "Possible duplicates").
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.fhir.models import validate
from gateway.hl7v2.tokenizer import parse
from gateway.identity import IdentityResolver
from gateway.identity.survivorship import ASSERTED_URL
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message

JSON = dict[str, Any]
PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
NAM = "TREJ40010112"
FACILITY = {"HSA": "CSSS-SOMMETS-HSA", "HLA": "CSSS-ARGENTEUIL-HLA"}
GP = "GMF des Laurentides^^^^^^^^^GMF123|1234567^Bélanger^Marie^^^Dre^^^CMQ"
_counter = [0]


def fields(sid: str, values: dict[int, str]) -> str:
    out = [sid] + [""] * max(values)
    for n, text in values.items():
        out[n] = text
    return "|".join(out)


def adt(trigger: str, when: str, *, site: str = "HSA", pid: dict[int, str] | None = None, pd1: str = "",
        pv1: dict[int, str] | None = None, nam: bool = True, nk1: tuple[str, ...] = ()) -> MapResult:
    _counter[0] += 1
    ids = f"{site}1^^^{site}^MR" + (f"~{NAM}^^^RAMQ^JHN" if nam else "")
    segments = [f"MSH|^~\\&|URGENCE|{FACILITY[site]}|PIVOT|CISSS|{when}||ADT^{trigger}^ADT_A01|M{_counter[0]}|P|2.5.1",
                f"EVN|{trigger}|{when}",
                fields("PID", {1: "1", 3: ids, 5: "Tremblay^Jérôme", 7: "19400101", 8: "M", **(pid or {})})]
    if pd1:
        segments.append(f"PD1|||{pd1}")
    segments += [f"NK1|{n}|{name}|SPO" for n, name in enumerate(nk1, 1)]
    if pv1 is not None:
        segments.append(fields("PV1", {1: "1", 2: "E", 3: f"URG^CIV01^1^{site}", 19: f"V1^^^{site}^VN", **pv1}))
    msg = parse(("\r".join(segments) + "\r").encode(), None)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2030, 1, 1, tzinfo=UTC)))


@pytest.fixture
def resolver(state_url: str) -> Iterator[IdentityResolver]:
    """On both engines: in memory (SQLite) and a fresh PostgreSQL database (PIVOT_STATE_URL)."""
    resolver = IdentityResolver(None, state_url)
    yield resolver
    resolver.close()


def patient(resolver: IdentityResolver, result: MapResult) -> JSON:
    out = resolver.resolve(result)
    assert out.patient_id is not None
    stored = resolver.index.resource("Patient", out.patient_id)
    assert stored is not None
    return stored.body


def encounter(resolver: IdentityResolver, result: MapResult) -> JSON:
    resolver.resolve(result)
    enc = next(r for r in result.resources if r["resourceType"] == "Encounter")
    stored = resolver.index.resource("Encounter", enc["id"])
    assert stored is not None
    return stored.body


def phones(p: JSON) -> list[tuple[str, str]]:
    return [(t.get("use", ""), t.get("value", "")) for t in p.get("telecom", [])]


# -- item 1: empty keeps, "" deletes ---------------------------------------------------------------------
def test_an_a08_keeps_what_it_does_not_repeat(resolver: IdentityResolver) -> None:
    patient(resolver, adt("A04", "202601010800", pid={13: "^PRN^PH^^^819^5550001", 16: "M"}, pd1=GP, pv1={}))
    after = patient(resolver, adt("A08", "202601010900", pid={5: "Tremblay^Jérôme^Luc"}, pv1={}))
    assert after["maritalStatus"]["coding"][0]["code"] == "M"
    assert len(after["generalPractitioner"]) == 2  # the family doctor is still told
    assert phones(after) == [("home", "819 5550001")]
    assert after["name"][0]["given"] == ["Jérôme", "Luc"]


def test_an_explicit_null_deletes(resolver: IdentityResolver) -> None:
    patient(resolver, adt("A04", "202601010800", pid={13: "^PRN^PH^^^819^5550001", 16: "M"}, pd1=GP, pv1={}))
    after = patient(resolver, adt("A08", "202601010900", pid={13: '""', 16: '""'}, pd1='""', pv1={}))
    assert "maritalStatus" not in after
    assert "telecom" not in after
    assert "generalPractitioner" not in after


# -- item 2: one golden record across sites --------------------------------------------------------------
def test_a_sparser_site_never_wipes_the_person(resolver: IdentityResolver) -> None:
    patient(resolver, adt("A04", "202601010800", pid={13: "^PRN^PH^^^819^5550001", 16: "M"}, pd1=GP, pv1={}))
    after = patient(resolver, adt("A04", "202601020800", site="HLA", pv1={}))
    assert after["maritalStatus"]["coding"][0]["code"] == "M"
    assert len(after["generalPractitioner"]) == 2
    assert phones(after) == [("home", "819 5550001")]
    assert {i["system"] for i in after["identifier"]} >= {"urn:pivot:id:HSA", "urn:pivot:id:HLA"}


def test_an_older_message_still_adds_what_nobody_said_since(resolver: IdentityResolver) -> None:
    patient(resolver, adt("A04", "202601010800", pid={14: "^WPN^PH^^^819^5550002"}, pv1={}))
    patient(resolver, adt("A04", "202601030800", site="HLA", pid={16: "S"}, pv1={}))
    # an A08 of the 2nd, arriving late: its new home phone is the newest word on the phone; its
    # marital status is older than the HLA one and loses
    late = patient(resolver, adt("A08", "202601020800", pid={13: "^PRN^PH^^^819^5550009", 16: "M"}, pv1={}))
    assert sorted(phones(late)) == [("home", "819 5550009"), ("work", "819 5550002")]  # no use dropped
    assert late["maritalStatus"]["coding"][0]["code"] == "S"


def test_the_provenance_records_which_site_said_what(resolver: IdentityResolver) -> None:
    out = resolver.resolve(adt("A08", "202601010900", pid={16: "M", 13: '""'}, pv1={}))
    prov = next(r for r in out.resources if r["resourceType"] == "Provenance")
    said = [e for e in prov["extension"] if e["url"] == ASSERTED_URL]
    mine = next(e for e in said if e["extension"][0]["valueReference"]["reference"] == f"Patient/{out.patient_id}")
    elements = {(x["url"], x.get("valueString")) for x in mine["extension"][1:]}
    assert ("element", "maritalStatus") in elements
    assert ("nulled", "telecom.home") in elements
    assert "Tremblay" not in str(said)  # element names, never values
    validate(prov)


def kin_active(resolver: IdentityResolver, rid: str) -> bool:
    stored = resolver.index.resource("RelatedPerson", rid)
    assert stored is not None
    return bool(stored.body["active"])


def test_nk1_set_is_replaced_only_when_sent(resolver: IdentityResolver) -> None:
    first = resolver.resolve(adt("A04", "202601010800", nk1=("Roy^Louise", "Roy^Marc"), pv1={}))
    kin = [r["id"] for r in first.resources if r["resourceType"] == "RelatedPerson"]
    assert len(kin) == 2
    resolver.resolve(adt("A08", "202601010900", pv1={}))  # no NK1: both kept
    assert [kin_active(resolver, k) for k in kin] == [True, True]
    resolver.resolve(adt("A08", "202601011000", nk1=("Roy^Louise",), pv1={}))  # the set is now one
    assert [kin_active(resolver, k) for k in kin] == [True, False]


# -- item 3: the visit state machine ----------------------------------------------------------------------
def test_an_a08_after_the_a03_keeps_the_visit_finished(resolver: IdentityResolver) -> None:
    encounter(resolver, adt("A04", "202601010800", pv1={44: "202601010800"}))
    done = encounter(resolver, adt("A03", "202601011200", pv1={36: "01", 45: "202601011200"}))
    assert done["status"] == "finished"
    after = encounter(resolver, adt("A08", "202601011300", pv1={}))
    assert after["status"] == "finished"
    assert after["period"]["end"] == done["period"]["end"]
    assert after["hospitalization"]["dischargeDisposition"] == done["hospitalization"]["dischargeDisposition"]
    assert {loc["status"] for loc in after["location"]} == {"completed"}
    reopened = encounter(resolver, adt("A13", "202601011400", pv1={}))
    assert reopened["status"] == "in-progress"
    assert "end" not in reopened["period"]


def test_a_cancel_of_a_finished_visit_is_entered_in_error(resolver: IdentityResolver) -> None:
    encounter(resolver, adt("A04", "202601010800", pv1={}))
    encounter(resolver, adt("A03", "202601011200", pv1={}))
    assert encounter(resolver, adt("A11", "202601011300", pv1={}))["status"] == "entered-in-error"
    # no A08 revives it
    assert encounter(resolver, adt("A08", "202601011400", pv1={}))["status"] == "entered-in-error"


def test_a_status_never_goes_back(resolver: IdentityResolver) -> None:
    encounter(resolver, adt("A04", "202601010800", pv1={}))
    assert encounter(resolver, adt("A08", "202601010900", pv1={2: "P"}))["status"] == "in-progress"


# -- item 6: look-alikes as clusters -----------------------------------------------------------------------
def test_look_alikes_make_one_flag_each_with_constant_work(resolver: IdentityResolver) -> None:
    published: list[int] = []
    for n in range(40):
        out = resolver.resolve(adt("A04", f"2026010108{n:02d}", pid={3: f"T{n}^^^HSA^MR"}, nam=False, pv1={}))
        published.append(sum(1 for r in out.resources if r["resourceType"] == "Flag"))
    assert published[0] == 0
    assert published[1] == 2  # the first look-alike: both records get their Flag
    assert set(published[2:]) == {1}  # then one Flag per newcomer, never one per earlier look-alike
    listed = resolver.duplicates()
    assert len(listed) == 40
    assert len({d.patient_a for d in listed}) == 40


def test_two_nams_are_two_people_but_a_record_without_nam_joins_them(resolver: IdentityResolver) -> None:
    resolver.resolve(adt("A04", "202601010800", pv1={}))
    other = adt("A04", "202601010900", site="HLA", pid={3: "HLA9^^^HLA^MR~TREJ40010199^^^RAMQ^JHN"}, nam=False,
                pv1={})
    resolver.resolve(other)
    assert resolver.duplicates() == []
    resolver.resolve(adt("A04", "202601011000", pid={3: "HSA7^^^HSA^MR"}, nam=False, pv1={}))
    assert len(resolver.duplicates()) == 3  # each NAM holder and the record without NAM


# -- item 1 for the pharmacy resources ----------------------------------------------------------------------
def test_a_pharmacy_resend_keeps_what_it_does_not_repeat(resolver: IdentityResolver) -> None:
    from tests.test_pharmacy_support import dispense, map_raw

    first = resolver.resolve(map_raw(dispense("RX1", "02242903", "Metformine", "20260301103500")))
    [disp] = [r for r in first.resources if r["resourceType"] == "MedicationDispense"]
    assert disp.get("daysSupply")
    again = map_raw(dispense("RX2", "02242903", "Metformine", "20260301113500", days=""))
    assert "daysSupply" not in next(r for r in again.resources if r["resourceType"] == "MedicationDispense")
    resolver.resolve(again)
    stored = resolver.index.resource("MedicationDispense", disp["id"])
    assert stored is not None
    assert stored.body["daysSupply"] == disp["daysSupply"]  # no TQ1 this time: the days' supply is kept

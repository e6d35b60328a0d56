"""DG1 is a repeating set per visit (mappings/README.md, "Update semantics"): a message that sends
DG1s for a visit replaces that visit's diagnoses, and the Conditions it no longer lists become
entered-in-error (as DG1-21 D makes them); a message without DG1 keeps them; an older message does
not undo a newer set. At the resolver, on both engines."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from gateway.fhir.models import validate
from gateway.hl7v2.tokenizer import parse
from gateway.identity import IdentityResolver
from mappings import MapContext, MapResult, map_message
from tests.test_identity_survivorship import PROFILES, SYSTEMS

CODES = {"R07.4": "Douleur thoracique", "J44.1": "MPOC avec exacerbation", "I50.0": "Insuffisance cardiaque"}


@pytest.fixture
def resolver(state_url: str) -> Iterator[IdentityResolver]:
    resolver = IdentityResolver(None, state_url)
    yield resolver
    resolver.close()


def visit(trigger: str, when: str, codes: tuple[str, ...]) -> MapResult:
    """An ER visit message (visit V1 at HSA, event time ``when``) with one DG1 per code, in order."""
    _seq[0] += 1
    raw = (f"MSH|^~\\&|URGENCE|CSSS-SOMMETS-HSA|PIVOT|CISSS|{when}||ADT^{trigger}^ADT_A01|DG{_seq[0]}|P|2.5.1\r"
           f"EVN|{trigger}|{when}\r"
           "PID|1||HSA1^^^HSA^MR~TREJ40010112^^^RAMQ^JHN||Tremblay^Jérôme||19400101|M\r"
           "PV1|1|E|URG^CIV01^1^HSA||||||||||||||||V1^^^HSA^VN|||||||||||||||||||||||||202601010800\r")
    raw += "".join(f"DG1|{n}||{code}^{CODES[code]}^I10CA||{when}|A\r" for n, code in enumerate(codes, 1))
    msg = parse(raw.encode(), None)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2030, 1, 1, tzinfo=UTC)))


_seq = [0]


def conditions(resolver: IdentityResolver, result: MapResult) -> dict[str, str]:
    """code -> verificationStatus ('' when none) of the visit's stored Conditions."""
    out: dict[str, str] = {}
    person = result.patient_id
    assert person is not None
    for rid in resolver.index.record_ids(person, "Condition"):
        stored = resolver.index.resource("Condition", rid)
        assert stored is not None
        body = stored.body
        status = (body.get("verificationStatus") or {}).get("coding", [{}])[0].get("code", "")
        out[body["code"]["coding"][0]["code"]] = status
    return out


def diagnosis_count(resolver: IdentityResolver, result: MapResult) -> int:
    enc = next(r for r in result.resources if r["resourceType"] == "Encounter")
    stored = resolver.index.resource("Encounter", enc["id"])
    assert stored is not None
    return len(stored.body.get("diagnosis", []))


def test_a_smaller_set_removes_what_it_no_longer_lists(resolver: IdentityResolver) -> None:
    first = resolver.resolve(visit("A04", "202601010800", ("R07.4", "J44.1")))
    assert conditions(resolver, first) == {"R07.4": "", "J44.1": ""}
    update = resolver.resolve(visit("A08", "202601010900", ("R07.4",)))
    assert conditions(resolver, update) == {"R07.4": "", "J44.1": "entered-in-error"}
    assert diagnosis_count(resolver, update) == 1
    removed = next(r for r in update.resources if r["resourceType"] == "Condition"
                   and r.get("verificationStatus", {}).get("coding", [{}])[0].get("code") == "entered-in-error")
    validate(removed)  # published with the message: the stores and subscribers hear of it
    assert "clinicalStatus" not in removed  # con-5


def test_no_dg1_keeps_every_diagnosis(resolver: IdentityResolver) -> None:
    first = resolver.resolve(visit("A04", "202601010800", ("R07.4", "J44.1")))
    resolver.resolve(visit("A08", "202601010900", ()))
    assert conditions(resolver, first) == {"R07.4": "", "J44.1": ""}


def test_an_older_set_does_not_undo_a_newer_one(resolver: IdentityResolver) -> None:
    resolver.resolve(visit("A04", "202601010800", ("R07.4",)))
    newer = resolver.resolve(visit("A08", "202601011000", ("R07.4", "I50.0")))
    resolver.resolve(visit("A08", "202601010900", ("R07.4",)))  # arrives late
    assert conditions(resolver, newer) == {"R07.4": "", "I50.0": ""}


def test_a_replacement_set_of_other_codes(resolver: IdentityResolver) -> None:
    first = resolver.resolve(visit("A04", "202601010800", ("R07.4",)))
    resolver.resolve(visit("A08", "202601010900", ("I50.0",)))
    assert conditions(resolver, first) == {"R07.4": "entered-in-error", "I50.0": ""}

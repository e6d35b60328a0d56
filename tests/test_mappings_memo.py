"""Issue #14: memoized datatype conversions and the verbatim validation cache must never change an
output or a validation outcome (a memo hit is a fresh copy; a cached resource is the exact value
that was validated)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.errors import ValidateError
from gateway.fhir.models import validate
from gateway.hl7v2.tokenizer import DEFAULT_DELIMITERS, Delimiters, Rep
from mappings import IdentifierSystems, validation
from mappings.datatypes import cwe_to_codeable_concept, pl_to_location, xcn_to_practitioner, xon_to_organization
from mappings.datatypes.coded import convert_cwe
from mappings.datatypes.entities import convert_pl, convert_xcn, convert_xon
from mappings.datatypes.memo import Memo

SYSTEMS = IdentifierSystems.load(None)
XCN = "7654321^Lefebvre^Paul^^^Dr^^^CMQ^^^^MD"
OTHER = Delimiters(component="#", subcomponent="*")


def rep(text: str, d: Delimiters = DEFAULT_DELIMITERS) -> Rep:
    return Rep(text, d)


@pytest.mark.parametrize("raw", [XCN, "123^Roy^Ann", "^B\\S\\C^D", "1&x^A&B^C", "", "^^^"])
def test_memoized_conversions_equal_the_plain_ones(raw: str) -> None:
    for _ in range(2):  # miss, then hit
        assert xcn_to_practitioner(rep(raw), SYSTEMS, "HSJ") == convert_xcn(rep(raw), SYSTEMS, "HSJ")
        assert xon_to_organization(rep(raw), SYSTEMS, "HSJ") == convert_xon(rep(raw), SYSTEMS, "HSJ")
        assert pl_to_location(rep(raw), "HSJ") == convert_pl(rep(raw), "HSJ")
        assert cwe_to_codeable_concept(rep(raw), "urn:x") == convert_cwe(rep(raw), "urn:x")


def test_a_callers_mutation_never_reaches_the_next_message() -> None:
    first = xcn_to_practitioner(rep(XCN), SYSTEMS, "HSJ")
    assert first is not None
    pristine = copy.deepcopy(first)
    first["name"][0]["given"].append("leak")
    first["identifier"][0]["value"] = "leak"
    second = xcn_to_practitioner(rep(XCN), SYSTEMS, "HSJ")
    assert second == pristine
    assert second is not first
    assert second["name"] is not first["name"]


def test_the_memo_key_covers_every_input() -> None:
    base = xcn_to_practitioner(rep(XCN), SYSTEMS, "HSJ")
    assert xcn_to_practitioner(rep(XCN.replace("^", "#"), OTHER), SYSTEMS, "HSJ") == base
    assert xcn_to_practitioner(rep(XCN, OTHER), SYSTEMS, "HSJ") != base  # same text, other separators
    configured = IdentifierSystems.load(None)
    configured.systems["CMQ"] = "urn:configured"
    mine = xcn_to_practitioner(rep(XCN), configured, "HSJ")
    assert mine is not None
    assert mine["identifier"][0]["system"] == "urn:configured"
    assert xcn_to_practitioner(rep("^Roy^Ann"), SYSTEMS, "A") != xcn_to_practitioner(rep("^Roy^Ann"), SYSTEMS, "B")
    assert cwe_to_codeable_concept(rep("F"), "urn:a") != cwe_to_codeable_concept(rep("F"), "urn:b")


def test_rep_keys_are_equal_only_for_equal_components() -> None:
    reps = [rep("a^b"), rep("a^b", OTHER), rep("a#b", OTHER), rep("a\\S\\b"), rep("a\\T\\b"), rep("a&b"),
            Rep.literal("a^b")]
    for left in reps:
        for right in reps:
            if left.key() == right.key():
                assert left.comps == right.comps
    escaped = rep("a\\S\\b")
    assert escaped.key() == rep("a\\S\\b").key()


def test_memo_is_bounded() -> None:
    memo = Memo(max_entries=3)
    for i in range(10):
        memo.put(i, {"n": i})
    assert len(memo) <= 3
    assert memo.get(9) is not None
    assert memo.get(0) is None
    assert memo.get(9, owner=SYSTEMS) is None  # another owner: a miss


def practitioner(source: str = "urn:pivot:sender:A#1") -> dict[str, Any]:
    found = xcn_to_practitioner(rep(XCN), SYSTEMS, "HSJ")
    assert found is not None
    return {"resourceType": "Practitioner", "id": found["id"], "meta": {"source": source}, **found}


def outcome(fn: Any, arg: Any) -> bool:
    try:
        fn(arg)
    except ValidateError:
        return False
    return True


def test_a_repeated_practitioner_is_not_walked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    validation.validate_all([practitioner("urn:pivot:sender:A#1")])

    def no_walk(resource: dict[str, Any]) -> None:
        raise AssertionError("walked")

    monkeypatch.setattr(validation, "shape_key", no_walk)
    validation.validate_all([practitioner("urn:pivot:sender:A#2")])  # only meta.source differs


@pytest.mark.parametrize(("path", "bad"), [
    (("meta", "source"), "not a uri"),
    (("meta",), {"source": "urn:x", "versionId": "x y"}),
    (("id",), "bad id!"),
    (("name", 0, "family"), ""),
    (("identifier", 0, "system"), "a b"),
    (("active",), "yes"),
    (("name", 0, "given"), "Paul"),
])
def test_the_verbatim_cache_agrees_with_full_validation(path: tuple[Any, ...], bad: Any) -> None:
    good = practitioner()
    validation.validate_all([good])
    variant = copy.deepcopy(good)
    node: Any = variant
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = bad
    assert outcome(validation.validate_all, [variant]) == outcome(validate, variant)


def test_verbatim_keys_keep_json_types_apart() -> None:
    org = {"resourceType": "Organization", "id": "o", "active": True}
    keys = {validation.verbatim_key({**org, "active": v}) for v in (True, 1, 1.0, "true")}
    assert len(keys) == 4
    assert validation.verbatim_key({"resourceType": "Patient", "id": "p"}) is None
    assert validation.verbatim_key({**org, "meta": {"source": "a b"}}) is None

"""The shape cache of mappings.validation must never change a validation outcome.

For every golden resource, each primitive the cache may mask is replaced in turn by probe values
(valid and invalid for its FHIR type); the cached validator must accept or refuse exactly when
the full validator (gateway.fhir.models.validate) does.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import ValidateError
from gateway.fhir.models import validate
from mappings import validation
from tests.test_mappings_golden import CASES, GOLDEN, map_file

PROBES = {
    "string": ["", " ", "x\x0cy", "ok", "a\nb"],
    "code": ["", " a", "a  b", "a b", "a\tb"],
    "id": ["", "bad id", "x" * 65, "ok-1.2", "é"],
    "uri": ["", "a b", "urn:x"],
    "date": ["2026-13-01", "2026-02-30", "1950", "0000", "2026-01-01T10:00:00Z", "1950-03"],
    "dateTime": ["2026-01-01T25:00:00Z", "2026-01-01T10:00", "2026-01-01T10:00:00+15:00", "2026",
                 "2026-01-01T10:00:00.5-05:00", "2026-02-29", "2024-02-29T10:00:00+14:00"],
    "instant": ["2026-01-01", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00"],
}


def leaves(node: Any, schema: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from leaves(item, schema, (*path, i))
    elif isinstance(schema, str):
        yield path, schema
    elif isinstance(node, dict) and isinstance(schema, dict):
        for key, sub in schema.items():
            if key in node:
                yield from leaves(node[key], sub, (*path, key))


def put(resource: dict[str, Any], path: tuple[Any, ...], value: str) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out


def outcome(fn: Any, resource: dict[str, Any]) -> bool:
    try:
        fn(resource)
    except ValidateError:
        return False
    return True


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith(("er_", "adt_a40_merge", "adt_a08_v23"))])
def test_cached_validation_agrees_with_full_validation(name: str) -> None:
    resources = map_file(GOLDEN / f"{name}.hl7").resources
    checked = 0
    for resource in resources:
        validation.validate_all([resource])  # prime the cache with this shape
        for path, kind in leaves(resource, validation._SCHEMA[resource["resourceType"]]):
            for probe in PROBES[kind]:
                mutated = put(resource, path, probe)
                cached = outcome(lambda r: validation.validate_all([r]), mutated)
                assert cached == outcome(validate, mutated), (resource["resourceType"], path, probe)
                checked += 1
    assert checked > 100


def test_uncached_mode_validates_everything() -> None:
    resources = map_file(GOLDEN / "er_a04_utf8.hl7").resources
    validation.validate_all(resources, cached=False)
    broken = put(resources[0], ("gender",), "femme")
    with pytest.raises(ValidateError):
        validation.validate_all([broken])


def reference_key(resource: dict[str, Any]) -> str:
    """The cache key as it was first written (the masked resource as JSON text), the yardstick of
    the one-pass key: two resources may share a key only when they share this one."""

    def mask(node: Any, schema: Any) -> Any:
        if isinstance(node, list):
            return [mask(item, schema) for item in node]
        if isinstance(schema, str):
            ok = isinstance(node, str) and validation._CHECKS[schema](node)
            return validation._PLACEHOLDER[schema] if ok else node
        if isinstance(node, dict) and isinstance(schema, dict):
            return {k: (mask(v, schema[k]) if k in schema else v) for k, v in node.items()}
        return node

    return json.dumps(mask(resource, validation._SCHEMA[resource["resourceType"]]), separators=(",", ":"))


def random_patient(rnd: random.Random) -> dict[str, Any]:
    keys = ["identifier", "value", "system", "name", "given", "birthDate", "active", "coding", "code", "x"]
    leaves: list[Any] = ["", "s", "a b", "a\x0cb", "2026-02-30", "2024-02-29", "1950", None, True, False, 1, 0,
                         1.0, 0.0, -0.0, "1", "true"]

    def node(depth: int) -> Any:
        roll = rnd.random()
        if depth > 2 or roll < 0.5:
            return rnd.choice(leaves)
        if roll < 0.7:
            return [node(depth + 1) for _ in range(rnd.randint(0, 2))]
        return {rnd.choice(keys): node(depth + 1) for _ in range(rnd.randint(0, 2))}

    return {"resourceType": "Patient", **{rnd.choice(keys): node(0) for _ in range(rnd.randint(1, 3))}}


def test_shape_key_never_merges_what_the_masked_json_keeps_apart() -> None:
    rnd = random.Random(14)
    seen: dict[Any, str] = {}
    shared = 0
    for _ in range(8_000):
        resource = random_patient(rnd)
        key, ref = validation.shape_key(resource), reference_key(resource)
        if key in seen:
            shared += 1
            assert seen[key] == ref, resource  # the same key: the same masked resource
        seen[key] = ref
    assert shared > 500  # the alphabet is small: shapes repeat, so the check above ran


def test_values_json_has_not_are_never_cached() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "active": True}
    validation.validate_all([patient])
    odd = {"resourceType": "Patient", "id": "p1", "active": Decimal(1)}
    with pytest.raises(TypeError):
        hash(validation.shape_key(odd))
    assert validation.shape_key({**patient, "active": 1}) != validation.shape_key(patient)

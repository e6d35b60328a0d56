"""The shape cache of mappings.validation must never change a validation outcome.

For every golden resource, each primitive the cache may mask is replaced in turn by probe values
(valid and invalid for its FHIR type); the cached validator must accept or refuse exactly when
the full validator (gateway.fhir.models.validate) does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
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

"""Extraction of index values from a resource, driven by :mod:`gateway.fhirstore.params`.

For each parameter of the resource's type, the values at its paths become rows of one index
table: tokens ``(system, code)``, references ``(target type, target id)``, dates ``(lo, hi)`` in
epoch milliseconds, strings ``(normalised, raw)``. Values that cannot be read (a malformed date,
a reference that is not ``Type/id``) are not indexed; they never fail the write.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.fhirstore.dates import date_range, period_range
from gateway.fhirstore.params import SearchParam, indexed_params

_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")


@dataclass(slots=True)
class IndexRows:
    """Index rows of one resource, each tagged with the parameter key ``Type.name``."""

    tokens: set[tuple[str, str, str]] = field(default_factory=set)
    refs: set[tuple[str, str, str]] = field(default_factory=set)
    dates: set[tuple[str, int, int]] = field(default_factory=set)
    strings: set[tuple[str, str, str]] = field(default_factory=set)


def param_key(rtype: str, name: str) -> str:
    return f"{rtype}.{name}"


def walk(node: Any, path: str) -> Iterator[Any]:
    """Values at a dotted ``path`` below ``node``, lists flattened at every step."""
    items = [node]
    for step in path.split("."):
        nxt: list[Any] = []
        for item in items:
            if isinstance(item, dict) and step in item:
                value = item[step]
                nxt.extend(value if isinstance(value, list) else [value])
        items = nxt
    yield from items


def normalise(text: str) -> str:
    """Case- and accent-insensitive form of a string (``Bérubé`` → ``berube``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def split_reference(reference: str) -> tuple[str, str] | None:
    """``Patient/1``, ``http://host/fhir/Patient/1/_history/2`` → ``("Patient", "1")``; else None."""
    if reference.startswith(("#", "urn:")) or "?" in reference:
        return None
    match = _REF.search(reference)
    if match is None or match.end() != len(reference):
        return None
    return match.group(1), match.group(2)


def tokens_of(value: Any) -> Iterator[tuple[str, str]]:
    """(system, code) pairs of a code, boolean, Coding, CodeableConcept or Identifier."""
    if isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        if isinstance(value.get("coding"), list):
            for coding in value["coding"]:
                yield from tokens_of(coding)
        elif isinstance(value.get("code"), str):
            yield str(value.get("system") or ""), value["code"]
        elif isinstance(value.get("value"), str):
            yield str(value.get("system") or ""), value["value"]


def strings_of(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for part in _NAME_PARTS:
            got = value.get(part)
            for text in got if isinstance(got, list) else [got]:
                if isinstance(text, str):
                    yield text


def _dates_of(value: Any) -> Iterator[tuple[int, int]]:
    try:
        if isinstance(value, str):
            yield date_range(value)
        elif isinstance(value, dict) and ("start" in value or "end" in value):
            yield period_range(value)
    except ValueError:
        return


def _add(rows: IndexRows, key: str, param: SearchParam, value: Any) -> None:
    if param.type == "token":
        rows.tokens.update((key, system, code) for system, code in tokens_of(value))
    elif param.type == "reference":
        ref = value.get("reference") if isinstance(value, dict) else None
        target = split_reference(ref) if isinstance(ref, str) else None
        if target is not None and (not param.targets or target[0] in param.targets):
            rows.refs.add((key, target[0], target[1]))
    elif param.type == "date":
        rows.dates.update((key, lo, hi) for lo, hi in _dates_of(value))
    else:
        rows.strings.update((key, normalise(text), text) for text in strings_of(value))


def extract(resource: dict[str, Any]) -> IndexRows:
    """Every index row of ``resource`` (its type's parameters, see ``params``)."""
    rtype = str(resource.get("resourceType"))
    rows = IndexRows()
    for param in indexed_params(rtype):
        key = param_key(rtype, param.name)
        for path in param.paths:
            for value in walk(resource, path):
                _add(rows, key, param, value)
    return rows


def references_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-like object (a dict with a string ``reference``) anywhere in ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            if isinstance(value, dict | list):
                yield from references_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from references_in(item)

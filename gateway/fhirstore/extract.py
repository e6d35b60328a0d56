"""Extraction of index values from a resource, driven by :mod:`gateway.fhirstore.params`.

For each parameter of the resource's type, the values at its paths become rows of one index
table: tokens ``(system, code)``, references ``(target type, target id)``, dates ``(lo, hi)`` in
epoch milliseconds, strings ``(normalised, raw)``. Values that cannot be read (a malformed date,
a reference that is not ``Type/id``) are not indexed; they never fail the write.

This runs on every changed resource the store sink writes, so each type's parameters are
precompiled once into a plan (split paths, the index table of each; rebuilt if that type's entry
of the params table is replaced) and the values most often repeated — references, names, date
texts — are converted through small LRU caches. ``extract`` gives the same rows as a plain
``walk`` of every path through ``tokens_of``/``strings_of``/``date_range``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

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


_Kind = Literal["tokens", "refs", "dates", "strings"]
_KIND_OF: dict[str, _Kind] = {"token": "tokens", "reference": "refs", "date": "dates", "string": "strings"}


@dataclass(frozen=True, slots=True)
class _Step:
    """One parameter of a type, precompiled: its index table, key, split paths and reference targets."""

    kind: _Kind
    key: str
    paths: tuple[tuple[str, ...], ...]
    targets: frozenset[str]


_PLANS: dict[str, tuple[tuple[SearchParam, ...], tuple[_Step, ...]]] = {}


def _plan(rtype: str) -> tuple[_Step, ...]:
    """The precompiled parameters of ``rtype``, rebuilt when its entry of the params table changes."""
    params = indexed_params(rtype)
    cached = _PLANS.get(rtype)
    if cached is not None and cached[0] is params:
        return cached[1]
    steps = tuple(_Step(_KIND_OF[p.type], param_key(rtype, p.name), tuple(tuple(x.split(".")) for x in p.paths),
                        frozenset(p.targets)) for p in params)
    _PLANS[rtype] = (params, steps)
    return steps


def _values(resource: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
    """``walk`` on a split path, as a list (the extraction's inner loop)."""
    value = resource.get(path[0])
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for step in path[1:]:
        nxt: list[Any] = []
        for item in items:
            if isinstance(item, dict) and step in item:
                got = item[step]
                if isinstance(got, list):
                    nxt.extend(got)
                else:
                    nxt.append(got)
        items = nxt
    return items


@lru_cache(maxsize=8192)
def _target(reference: str) -> tuple[str, str] | None:
    return split_reference(reference)


@lru_cache(maxsize=8192)
def _string_row(text: str) -> tuple[str, str]:
    return normalise(text), text


@lru_cache(maxsize=8192)
def _date_row(text: str) -> tuple[int, int] | None:
    try:
        return date_range(text)
    except ValueError:
        return None


def _add_token(out: set[tuple[str, str, str]], key: str, value: Any) -> None:
    """``tokens_of`` without the generators (the same rows)."""
    if isinstance(value, dict):
        coding = value.get("coding")
        if isinstance(coding, list):
            for item in coding:
                _add_token(out, key, item)
            return
        code = value.get("code")
        if not isinstance(code, str):
            code = value.get("value")
        if isinstance(code, str):
            out.add((key, str(value.get("system") or ""), code))
    elif isinstance(value, bool):
        out.add((key, "", "true" if value else "false"))
    elif isinstance(value, str):
        out.add((key, "", value))


def _add(rows: IndexRows, step: _Step, values: list[Any]) -> None:
    key, kind = step.key, step.kind
    if kind == "tokens":
        for value in values:
            _add_token(rows.tokens, key, value)
    elif kind == "refs":
        for value in values:
            ref = value.get("reference") if isinstance(value, dict) else None
            target = _target(ref) if isinstance(ref, str) else None
            if target is not None and (not step.targets or target[0] in step.targets):
                rows.refs.add((key, target[0], target[1]))
    elif kind == "dates":
        for value in values:
            span = _date_row(value) if isinstance(value, str) else None
            if span is not None:
                rows.dates.add((key, *span))
            elif not isinstance(value, str):
                rows.dates.update((key, lo, hi) for lo, hi in _dates_of(value))
    else:
        for value in values:
            if isinstance(value, str):
                rows.strings.add((key, *_string_row(value)))
            else:
                rows.strings.update((key, *_string_row(text)) for text in strings_of(value))


def extract(resource: dict[str, Any]) -> IndexRows:
    """Every index row of ``resource`` (its type's parameters, see ``params``)."""
    rows = IndexRows()
    for step in _plan(str(resource.get("resourceType"))):
        for path in step.paths:
            values = _values(resource, path)
            if values:
                _add(rows, step, values)
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

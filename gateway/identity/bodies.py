"""The resources the resolver writes: the person's Patient, retired records, possible-duplicate Flags,
and references rewritten to the person.

All functions are pure (no index access): the same inputs always give the same JSON, so replays
and a second mapping of the same message publish identical content.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

JSON = dict[str, Any]
DUPLICATE_SYSTEM = "urn:pivot:identity:possible-duplicate"
"""Identifier system of possible-duplicate Flags (value = the Flag id): ``Flag?identifier=<this>|``."""
DUPLICATE_CODE_SYSTEM = "urn:pivot:codesystem:identity"
DUPLICATE_OF_URL = "urn:pivot:extension:possible-duplicate-of"
_FLAG_CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "admin",
                              "display": "Administrative"}]}
_DUPLICATE_CODE = {"coding": [{"system": DUPLICATE_CODE_SYSTEM, "code": "possible-duplicate",
                               "display": "Possible duplicate patient record"}],
                   "text": "Possible duplicate patient record"}
_OWN_FIELDS = ("id", "identifier", "active", "link")
_CONTAINERS = (dict, list)  # a tuple: ``dict | list`` would build a union object at every test


def references(node: Any) -> Iterator[JSON]:
    """Every Reference object (a dict with a string ``reference``) inside a resource, in document order."""
    found: list[JSON] = []
    _collect(node, found)
    return iter(found)


def _collect(node: Any, found: list[JSON]) -> None:
    """``references`` without a generator per level (it runs on every resource of every message)."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            found.append(node)
        for value in node.values():
            if isinstance(value, _CONTAINERS):
                _collect(value, found)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, _CONTAINERS):
                _collect(item, found)


def clone(node: Any) -> Any:
    """A deep copy of plain JSON (dicts, lists, immutable scalars): faster than ``copy.deepcopy``."""
    if isinstance(node, dict):
        return {k: clone(v) for k, v in node.items()}
    if isinstance(node, list):
        return [clone(v) for v in node]
    return node


def _rewritten(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _rewritten(v, mapping) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in mapping:
            out["reference"] = mapping[ref]
        return out
    if isinstance(node, list):
        return [_rewritten(v, mapping) for v in node]
    return node


def rewrite(resource: JSON, mapping: dict[str, str]) -> JSON:
    """``resource`` with its references found in ``mapping`` (``Type/id`` → ``Type/id``) replaced: a
    copy, or ``resource`` itself when ``mapping`` changes nothing (callers never modify either)."""
    effective = {src: dst for src, dst in mapping.items() if src != dst}
    if not effective:
        return resource
    out: JSON = _rewritten(resource, effective)
    return out


def first_patient_ref(node: Any) -> str | None:
    """Id of the first Patient a resource refers to (None when none), without walking past it: the
    owner of a resource is usually its ``subject``/``patient``, near the top."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
        items: Any = node.values()
    elif isinstance(node, list):
        items = node
    else:
        return None
    for value in items:
        if isinstance(value, _CONTAINERS) and (found := first_patient_ref(value)) is not None:
            return found
    return None


def person_patient(base: JSON, person: str, identifiers: list[JSON], retired: list[str]) -> JSON:
    """The person's Patient: demographics of ``base`` (a mapped or stored Patient), id ``person``,
    every identifier it carries, ``active`` true, and a ``replaces`` link per retired record."""
    out: JSON = {"resourceType": "Patient", "id": person}
    if "meta" in base:
        out["meta"] = clone(base["meta"])
    out["identifier"] = clone(identifiers)
    out["active"] = True
    for key, value in base.items():
        if key not in out and key not in _OWN_FIELDS and key != "resourceType":
            out[key] = clone(value)
    if retired:
        out["link"] = [{"other": {"reference": f"Patient/{rid}"}, "type": "replaces"} for rid in sorted(retired)]
    return out


def retired_patient(base: JSON, survivor: str) -> JSON:
    """A retired record: ``base`` (its last version) with ``active`` false and one ``replaced-by``
    link to ``survivor``; its identifiers stay as they were (searching an old MRN finds both, only
    the survivor active)."""
    out: JSON = clone(base)
    out["active"] = False
    out["link"] = [{"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}]
    return out


def duplicate_flag(flag_id: str, a: str, b: str, *, active: bool, since: str, until: str, meta: JSON | None) -> JSON:
    """The possible-duplicate Flag of the pair (``a``, ``b``): subject ``a``, extension naming ``b``,
    category admin, status active until the pair is resolved (merged, linked, or proven different by
    two NAMs), then inactive with ``period.end``."""
    flag: JSON = {"resourceType": "Flag", "id": flag_id}
    if meta:
        flag["meta"] = clone(meta)
    flag["extension"] = [{"url": DUPLICATE_OF_URL, "valueReference": {"reference": f"Patient/{b}"}}]
    flag["identifier"] = [{"system": DUPLICATE_SYSTEM, "value": flag_id}]
    flag["status"] = "active" if active else "inactive"
    flag["category"] = [clone(_FLAG_CATEGORY)]
    flag["code"] = clone(_DUPLICATE_CODE)
    flag["subject"] = {"reference": f"Patient/{a}"}
    period = {k: v for k, v in (("start", since), ("end", "" if active else until)) if v}
    if period:
        flag["period"] = period
    return flag


def pair_of(flag: JSON) -> tuple[str, str]:
    """(subject, other) Patient ids of a possible-duplicate Flag."""
    subject = str(flag["subject"]["reference"]).split("/", 1)[1]
    other = str(flag["extension"][0]["valueReference"]["reference"]).split("/", 1)[1]
    return subject, other

"""Validation of produced resources through ``gateway.fhir.models.validate`` (the only module that
imports fhir.resources), with a cache of validated *shapes* so the hot path stays fast.

pydantic validation of fhir.resources models costs ~7 µs per complex element (~0.8 ms for the 11
resources of an ER message), far above the mapping itself. A resource's validation outcome depends
on its structure, on the verbatim values checked against required bindings (Patient.gender,
Encounter.status) and on each primitive value matching its FHIR type. So:

1. each resource is *masked*: at the paths listed in ``_SCHEMA`` (our own output's element types,
   taken from the FHIR R4 spec), a primitive value that passes our check for its type (the
   fhir_core regex, anchored, plus calendar/range checks: never laxer) is replaced by a fixed
   placeholder; every other value (codes with required bindings, unknown paths, any value that
   fails the check) stays verbatim;
2. the masked form is the cache key: a hit means a resource of the same shape, same verbatim
   values and type-valid primitives was fully validated before, so this one is valid too. The key
   is built in one pass as one flat hashable tuple (no copy, no JSON text): ``_SCHEMA`` is compiled
   once into per-kind masking functions, and each kind but ``string`` (names, addresses: checked
   every time, never remembered) remembers its last checks in a bounded dict (system URIs, codes
   and timestamps repeat);
3. a miss runs the full ``validate`` on the real resource and remembers its key on success.

Before the masked key, the resource types that repeat verbatim from message to message (the
Practitioners, Organizations and Locations of a site: ``_VERBATIM_TYPES``) are looked up by their
exact value: ``marshal`` bytes (C speed; equal bytes load back to equal values of the same exact
types, so equal bytes mean the same resource), with ``meta`` left out when it is only a
``source`` that passes the uri check (masked, as in the key above: it changes with each message).
A hit is a resource already known valid; a miss only costs the marshal call.

Errors always come from the full validator (a failing value is never masked, so it misses). The
cache only decides whether to re-run a validation whose outcome is already known: it never changes
the resources. ``validate_all(…, cached=False)`` validates every resource in full.
"""

from __future__ import annotations

import marshal
import re
from collections.abc import Callable
from datetime import date
from typing import Any

from gateway.fhir.models import validate

JSON = dict[str, Any]
_CACHE_MAX = 8192
_SEEN_MAX = 4096  # per primitive kind: values already checked (system URIs, codes, timestamps repeat)
_validated: set[tuple[Any, ...]] = set()
_VERBATIM_TYPES = frozenset({"Practitioner", "Organization", "Location"})
_verbatim: set[bytes] = set()

# -- primitive checks (each at least as strict as fhir_core's) --------------------------------------
_STRING = re.compile(r"[ \r\n\t\S]+").fullmatch
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*").fullmatch
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}").fullmatch
_URI = re.compile(r"\S+").fullmatch
# ranges in the pattern (year not 0000, month 01-12, day 01-31, 00:00:00-23:59:59, offset up to
# ±13:59 or ±14:00); only a day past the 28th needs the calendar (_real_day)
_YMD = r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_YEAR_MONTH = r"(?!0000)[0-9]{4}(?:-(?:0[1-9]|1[0-2]))?"
_TIME = (r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
         r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))")
_DATE = re.compile(f"{_YMD}|{_YEAR_MONTH}").fullmatch
_DATETIME = re.compile(f"{_YMD}(?:{_TIME})?|{_YEAR_MONTH}").fullmatch
_INSTANT = re.compile(f"{_YMD}{_TIME}").fullmatch


def _real_day(text: str) -> bool:
    """A day past the 28th exists in its month (``text`` already matched one of the patterns above)."""
    if len(text) < 10 or text[8:10] <= "28":
        return True
    try:
        date(int(text[:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _string_ok(text: str) -> bool:
    # a printable str has no whitespace but the space (checked over every code point), so it matches
    return (bool(text) and text.isprintable()) or _STRING(text) is not None


_CHECKS: dict[str, Callable[[str], bool]] = {
    "string": _string_ok,
    "code": lambda text: _CODE(text) is not None,
    "id": lambda text: _ID(text) is not None,
    "uri": lambda text: _URI(text) is not None,
    "date": lambda text: _DATE(text) is not None and _real_day(text),
    "dateTime": lambda text: _DATETIME(text) is not None and _real_day(text),
    "instant": lambda text: _INSTANT(text) is not None and _real_day(text),
}

_PLACEHOLDER = {"string": "s", "code": "c", "id": "i", "uri": "u", "date": "2000-01-01",
                "dateTime": "2000-01-01T00:00:00+00:00", "instant": "2000-01-01T00:00:00+00:00"}

# -- element types of what we emit (FHIR R4) ----------------------------------------------------------
_CODING = {"system": "uri", "code": "code", "display": "string"}
_CC = {"coding": _CODING, "text": "string"}
_PERIOD = {"start": "dateTime", "end": "dateTime"}
_IDENTIFIER = {"type": _CC, "system": "uri", "value": "string", "period": _PERIOD}
_REF = {"reference": "string", "display": "string", "identifier": _IDENTIFIER}
_NAME = {"family": "string", "given": "string", "prefix": "string", "suffix": "string"}
_ADDRESS = {"line": "string", "city": "string", "district": "string", "state": "string",
            "postalCode": "string", "country": "string"}
_TELECOM = {"value": "string"}
_EXTENSION = {"valueString": "string", "valueDateTime": "dateTime"}
_BASE = {"id": "id", "meta": {"source": "uri"}, "identifier": _IDENTIFIER}
_SCHEMA: dict[str, JSON] = {
    "Patient": {**_BASE, "name": _NAME, "telecom": _TELECOM, "birthDate": "date",
                "_birthDate": {"extension": _EXTENSION}, "deceasedDateTime": "dateTime", "address": _ADDRESS,
                "maritalStatus": _CC, "communication": {"language": _CC}, "generalPractitioner": _REF,
                "link": {"other": _REF}},
    "RelatedPerson": {**_BASE, "patient": _REF, "relationship": _CC, "name": _NAME, "telecom": _TELECOM,
                      "birthDate": "date", "address": _ADDRESS, "period": _PERIOD},
    "Organization": {**_BASE, "name": "string", "alias": "string"},
    "Practitioner": {**_BASE, "name": _NAME},
    "Location": {**_BASE, "name": "string", "description": "string", "physicalType": _CC},
    "Encounter": {**_BASE, "class": _CODING, "type": _CC, "serviceType": _CC, "subject": _REF,
                  "participant": {"type": _CC, "individual": _REF}, "period": _PERIOD,
                  "hospitalization": {"admitSource": _CC, "dischargeDisposition": _CC},
                  "location": {"location": _REF}, "reasonCode": _CC,
                  "diagnosis": {"condition": _REF, "use": _CC}, "serviceProvider": _REF},
    "Condition": {**_BASE, "category": _CC, "code": _CC, "subject": _REF, "encounter": _REF,
                  "onsetDateTime": "dateTime", "recordedDate": "dateTime", "asserter": _REF},
    "Provenance": {**_BASE, "extension": _EXTENSION, "target": _REF, "occurredDateTime": "dateTime",
                   "recorded": "instant", "activity": _CC, "agent": {"type": _CC, "who": _REF},
                   "entity": {"what": _REF}},
}


# -- the key: one pass over the resource, one flat tuple -----------------------------------------------
# A dict is _DICT key value key value… _END, a list _LIST item… _END (at a schema path; a verbatim
# subtree is one nested tuple, (_DICT, key, value…) or (_LIST, item…)); a str is itself (verbatim, or
# its kind's placeholder: a verbatim value at a masked path fails the check, the placeholder passes
# it, so they never meet); any other value (its class, value): True, 1 and 1.0 stay apart as in JSON.
_DICT, _LIST, _END = object(), object(), object()
_Mask = Callable[[Any], Any]


def _freeze(node: Any) -> Any:
    """``node`` verbatim, as a hashable value; a value of any type JSON has not makes the key
    unhashable on purpose (validate_all then validates in full)."""
    cls = node.__class__
    if cls is str:
        return node
    if cls is dict:
        return (_DICT, *[x for k, v in node.items() for x in (k, _freeze(v))])
    if cls is list:
        return (_LIST, *[_freeze(v) for v in node])
    if cls is float:
        return (cls, repr(node))  # -0.0 is not 0.0, as in JSON
    if cls is bool or cls is int or node is None:
        return (cls, node)
    return [node]


def _masker(kind: str) -> _Mask:
    """The masking of one primitive ``kind``: its placeholder when the value passes the check."""
    check, placeholder = _CHECKS[kind], _PLACEHOLDER[kind]
    if kind == "string":  # names, addresses…: checked each time (cheap), not remembered

        def mask_string(val: Any) -> Any:
            if val.__class__ is not str:
                return _freeze(val)
            return placeholder if check(val) else val

        return mask_string
    seen: dict[str, str] = {}

    def mask(val: Any) -> Any:
        if val.__class__ is not str:
            return _freeze(val)
        out = seen.get(val)
        if out is None:
            out = placeholder if check(val) else val
            if len(seen) >= _SEEN_MAX:
                seen.clear()
            seen[val] = out
        return out

    return mask


_MASKERS = {kind: _masker(kind) for kind in _CHECKS}
_MASK_STRING = _MASKERS["string"]


def _compile(schema: JSON) -> JSON:
    """``schema`` with each kind replaced by its masking function."""
    return {k: _MASKERS[v] if isinstance(v, str) else _compile(v) for k, v in schema.items()}


_COMPILED: dict[str, JSON] = {rtype: _compile(schema) for rtype, schema in _SCHEMA.items()}


def _walk(node: JSON, schema: JSON, out: list[Any]) -> None:
    """Append the key of a dict at a path of the schema (``schema``: its compiled children) to ``out``."""
    append = out.append
    append(_DICT)
    for k, v in node.items():
        append(k)
        sub = schema.get(k)
        cls = v.__class__
        if cls is str:
            if sub is None:
                append(v)
            elif sub is _MASK_STRING and v and v.isprintable():  # the commonest leaf, inlined
                append("s")
            else:
                append(_freeze(v) if sub.__class__ is dict else sub(v))
        elif sub is None:
            append(_freeze(v))
        elif sub.__class__ is dict:
            if cls is dict:
                _walk(v, sub, out)
            elif cls is list:
                append(_LIST)
                for item in v:
                    if item.__class__ is dict:
                        _walk(item, sub, out)
                    else:
                        append(_freeze(item))
                append(_END)
            else:
                append(_freeze(v))
        elif cls is list:
            append(_LIST)
            for item in v:
                append(sub(item))
            append(_END)
        else:
            append(sub(v))
    append(_END)


def shape_key(resource: JSON) -> tuple[Any, ...] | None:
    """The masked form of ``resource`` (None for a resource type we do not cache)."""
    rtype = resource.get("resourceType")
    schema = _COMPILED.get(rtype) if rtype.__class__ is str else None
    if schema is None:
        return None
    out: list[Any] = []
    _walk(resource, schema, out)
    return tuple(out)


def verbatim_key(resource: JSON) -> bytes | None:
    """The exact value of a resource of ``_VERBATIM_TYPES`` (meta.source masked, see module doc);
    None for another type, another ``meta`` or a value marshal cannot write."""
    if resource.get("resourceType") not in _VERBATIM_TYPES:
        return None
    meta = resource.get("meta")
    body = resource
    if meta is not None:
        if meta.__class__ is not dict or len(meta) != 1 or _MASKERS["uri"](meta.get("source")) != "u":
            return None
        body = {k: v for k, v in resource.items() if k != "meta"}
    try:
        return marshal.dumps((meta is not None, body), 2)  # version 2: no references, stabler bytes
    except ValueError:  # a type marshal has not (a Decimal, a subclass…): no verbatim cache
        return None


def _remember(cache: set[Any], key: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache.add(key)


def validate_all(resources: list[JSON], *, cached: bool = True) -> None:
    """Validate every resource (ValidateError names the resource type and paths, never values)."""
    for res in resources:
        exact = verbatim_key(res) if cached else None
        if exact is not None and exact in _verbatim:
            continue
        key = shape_key(res) if cached else None
        try:
            known = key is not None and key in _validated
        except TypeError:  # a value JSON has not (a set, a Decimal…) made the key unhashable: no cache
            key, known = None, False
        if not known:
            validate(res)
            if key is not None:
                _remember(_validated, key)
        if exact is not None:
            _remember(_verbatim, exact)

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
   values and type-valid primitives was fully validated before, so this one is valid too;
3. a miss runs the full ``validate`` on the real resource and remembers its key on success.

Errors always come from the full validator (a failing value is never masked, so it misses). The
cache only decides whether to re-run a validation whose outcome is already known: it never changes
the resources. ``validate_all(…, cached=False)`` validates every resource in full.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

from gateway.fhir.models import validate

JSON = dict[str, Any]
_CACHE_MAX = 8192
_validated: set[str] = set()

# -- primitive checks (each at least as strict as fhir_core's) --------------------------------------
_STRING = re.compile(r"[ \r\n\t\S]+")
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI = re.compile(r"\S+")
_DATETIME = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2}):(?P<S>[0-9]{2})(?:\.[0-9]{1,9})?(?P<tz>Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)


def _date_time_ok(text: str, kind: str) -> bool:
    m = _DATETIME.fullmatch(text)
    if m is None or m["y"] == "0000":
        return False
    if kind == "date" and m["H"]:
        return False
    if kind == "instant" and not m["H"]:
        return False
    try:
        date(int(m["y"]), int(m["m"] or 1), int(m["d"] or 1))
    except ValueError:
        return False
    if m["H"] and (int(m["H"]) > 23 or int(m["M"]) > 59 or int(m["S"]) > 59):
        return False
    tz = m["tz"]
    return not tz or tz == "Z" or tz[1:] == "14:00" or (int(tz[1:3]) <= 13 and int(tz[4:6]) <= 59)


def _ok(kind: str, val: Any) -> bool:
    if not isinstance(val, str):
        return False
    if kind == "string":
        return _STRING.fullmatch(val) is not None
    if kind == "code":
        return _CODE.fullmatch(val) is not None
    if kind == "id":
        return _ID.fullmatch(val) is not None
    if kind == "uri":
        return _URI.fullmatch(val) is not None
    return _date_time_ok(val, kind)


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


def _mask(node: Any, schema: Any) -> Any:
    if isinstance(node, list):
        return [_mask(item, schema) for item in node]
    if isinstance(schema, str):
        return _PLACEHOLDER[schema] if _ok(schema, node) else node
    if isinstance(node, dict) and isinstance(schema, dict):
        return {k: (_mask(v, schema[k]) if k in schema else v) for k, v in node.items()}
    return node


def shape_key(resource: JSON) -> str | None:
    """The masked form of ``resource`` as text (None for a resource type we do not cache)."""
    schema = _SCHEMA.get(str(resource.get("resourceType")))
    if schema is None:
        return None
    return json.dumps(_mask(resource, schema), separators=(",", ":"), ensure_ascii=False)


def validate_all(resources: list[JSON], *, cached: bool = True) -> None:
    """Validate every resource (ValidateError names the resource type and paths, never values)."""
    for res in resources:
        key = shape_key(res) if cached else None
        if key is not None and key in _validated:
            continue
        validate(res)
        if key is not None:
            if len(_validated) >= _CACHE_MAX:
                _validated.clear()
            _validated.add(key)

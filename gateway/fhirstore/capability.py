"""The CapabilityStatement, generated from the search-parameter table (nothing listed by hand)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from gateway import __version__
from gateway.fhirstore.params import RESOURCE_TYPES, SEARCH_PARAMS, SORTS, include_params

INTERACTIONS = ("read", "vread", "update", "delete", "history-instance", "history-type", "create",
                "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch")
RELEASE_DATE = "2026-11-24"

DOCUMENTATION = (
    "Search: parameters are repeated for AND and comma-separated for OR; unknown parameters are "
    "ignored and reported in an OperationOutcome entry (lenient, the FHIR default), or refused with "
    "400 under 'Prefer: handling=strict'; unsupported modifiers and malformed values are always 400. "
    "Result parameters: _count (default 50, max 1000), _page (opaque keyset token from the next/"
    f"previous links), _sort ({', '.join(SORTS)}; default _lastUpdated then id), _include, "
    "_summary=count, _total. Dates without a time zone are read as UTC. History: _count, _page, "
    "_since. Conditional update and create use strict search. JSON only."
)


# the Subscriptions Backport IG's operations (gateway.subscriptions answers them)
BACKPORT_OPERATIONS = {
    "status": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
    "events": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
}
_OPERATION_PATH = re.compile(r"/fhir/(?P<type>[A-Z][A-Za-z]+)/(?:[^/]+/)?\$(?P<name>[a-z][a-z0-9-]*)")
Operation = tuple[str, str, str]  # (resource type, operation name, OperationDefinition canonical)


def route_operations(paths: Iterable[str], definitions: Mapping[str, str]) -> list[Operation]:
    """The operations the app answers, read from its routes (``/fhir/Type[/id]/$name``), once each.

    Every operation must have its definition: a route added without one raises (a test builds the
    whole app), so the CapabilityStatement never lists less, or more, than what is served."""
    found: set[Operation] = set()
    for path in paths:
        m = _OPERATION_PATH.fullmatch(path)
        if m is None:
            continue
        name = m["name"]
        if name not in definitions:
            raise ValueError(f"operation ${name} ({path}) has no OperationDefinition")
        found.add((m["type"], name, definitions[name]))
    return sorted(found)


def capability_statement(base: str, software_version: str = __version__,
                         operations: Iterable[Operation] = ()) -> dict[str, Any]:
    """The server's CapabilityStatement: one rest.resource per supported type, with its operations
    (a type served only through operations, such as Group, is listed with those alone)."""
    by_type: dict[str, list[dict[str, str]]] = {}
    for rtype, name, definition in operations:
        by_type.setdefault(rtype, []).append({"name": name, "definition": definition})
    resources = []
    for rtype in RESOURCE_TYPES:
        params = SEARCH_PARAMS[rtype]
        search_params = []
        for p in params.values():
            item: dict[str, Any] = {"name": p.name, "type": p.type, "documentation": p.documentation}
            if p.definition:
                item["definition"] = p.definition
            search_params.append(item)
        resources.append({
            "type": rtype,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "not-supported",
            "searchInclude": [f"{rtype}:{p.name}" for p in include_params(rtype)],
            "searchParam": search_params,
            **({"operation": by_type[rtype]} if rtype in by_type else {}),
        })
    resources.extend({"type": rtype, "operation": ops} for rtype, ops in sorted(by_type.items())
                     if rtype not in RESOURCE_TYPES)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "Pivot",
        "kind": "instance",
        "software": {"name": "Pivot embedded FHIR store", "version": software_version},
        "implementation": {"description": "Pivot gateway embedded FHIR R4 store", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": DOCUMENTATION,
            "resource": resources,
            "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
        }],
    }

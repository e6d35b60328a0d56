"""The CapabilityStatement, generated from the search-parameter table (nothing listed by hand)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
_READ_PATH = re.compile(r"/fhir/(?P<type>[A-Z][A-Za-z]+)/[^/$]+")
_SEARCH_PATH = re.compile(r"/fhir/(?P<type>[A-Z][A-Za-z]+)")
Operation = tuple[str, str, str]  # (resource type, operation name, OperationDefinition canonical)

# search parameters of the types served outside the store (the routes that serve them validate with
# this table too: gateway/security/audit_search.py); others are conformance resources, found by url
OTHER_SEARCH_PARAMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "AuditEvent": (
        ("patient", "reference", "a Patient the access was about (entity role 1), Patient/id or id"),
        ("entity", "reference", "anything the access was about (entity.what), Type/id"),
        ("agent", "reference", "who accessed: a client id, or agent.who.reference (a disclosure's recipient)"),
        ("date", "date", "when recorded (eq, ne, gt, ge, lt, le)"),
        ("type", "token", "audit-event-type (rest; DCM 110106 Export for alerts and notifications)"),
        ("subtype", "token", "the restful interaction (read, search-type, operation, …) or the disclosure kind"),
        ("outcome", "token", "0 success, 4 minor failure (4xx), 8 serious failure (5xx)"),
        ("_count", "number", "page size (default 50, max 1000); next link: _page, newest first"),
    ),
}


@dataclass(frozen=True)
class Routes:
    """What an app's routes serve beyond the store: operations, and read/search of other types."""

    operations: tuple[Operation, ...] = ()
    interactions: tuple[tuple[str, str], ...] = ()  # (resource type, "read" | "search-type")


def read_routes(paths: Iterable[str], definitions: Mapping[str, str]) -> Routes:
    """Operations (``/fhir/Type[/id]/$name``) and reads/searches of named types (``/fhir/Type/{id}``,
    ``/fhir/Type``) among route paths; the store's own routes, whose type is a path parameter, are
    not among them. Every operation must have its definition: a route added without one raises (a
    test builds the whole app), so the CapabilityStatement never lists less, or more, than is served."""
    ops: set[Operation] = set()
    interactions: set[tuple[str, str]] = set()
    for path in paths:
        if m := _OPERATION_PATH.fullmatch(path):
            name = m["name"]
            if name not in definitions:
                raise ValueError(f"operation ${name} ({path}) has no OperationDefinition")
            ops.add((m["type"], name, definitions[name]))
        elif m := _READ_PATH.fullmatch(path):
            interactions.add((m["type"], "read"))
        elif m := _SEARCH_PATH.fullmatch(path):
            interactions.add((m["type"], "search-type"))
    return Routes(tuple(sorted(ops)), tuple(sorted(interactions)))


def capability_statement(base: str, software_version: str = __version__, routes: Routes = Routes()) -> dict[str, Any]:
    """The server's CapabilityStatement: one rest.resource per type of the store, with its operations,
    then the types served outside the store (Group, conformance resources) with what they allow."""
    by_type: dict[str, list[dict[str, str]]] = {}
    for rtype, name, definition in routes.operations:
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
    others = sorted(({t for t, _ in routes.interactions} | set(by_type)) - set(RESOURCE_TYPES))
    for rtype in others:
        codes = [code for t, code in routes.interactions if t == rtype]
        entry: dict[str, Any] = {"type": rtype}
        if codes:
            entry["interaction"] = [{"code": code} for code in codes]
        if "search-type" in codes:  # conformance resources: found by their canonical url
            served = OTHER_SEARCH_PARAMS.get(rtype, (("url", "uri", "the canonical url"),))
            entry["searchParam"] = [{"name": n, "type": t, "documentation": d} for n, t, d in served]
        if rtype in by_type:
            entry["operation"] = by_type[rtype]
        resources.append(entry)
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

"""The CapabilityStatement, generated from the search-parameter table (nothing listed by hand)."""

from __future__ import annotations

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


def capability_statement(base: str, software_version: str = __version__) -> dict[str, Any]:
    """The server's CapabilityStatement: one rest.resource per supported type."""
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
        })
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

"""The one import point of ``fhir.resources`` (R4B models, R4-compatible JSON for our resources).

Everything else in the project handles FHIR resources as plain ``dict`` JSON and calls
:func:`validate` before a resource leaves the gateway.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import ValidationError

from gateway.errors import ValidateError

JSON = dict[str, Any]

# Required bindings that the models do not check (values outside them are invalid FHIR).
_REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Encounter", "status"): frozenset(
        {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
         "entered-in-error", "unknown"}
    ),
}


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except KeyError:
        raise ValidateError(f"unknown FHIR resource type {resource_type}") from None


def validate(resource: JSON) -> JSON:
    """Validate one resource against the R4B model and our required-binding checks.

    Returns the resource unchanged (plain JSON) or raises :class:`ValidateError` naming the
    resource type and the failing element paths (never their values).
    """
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ValidateError("resource without resourceType")
    model = _model(rtype)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        paths = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})[:5]
        raise ValidateError(f"invalid {rtype}: {', '.join(paths)}") from None
    except (TypeError, AttributeError, ValueError, RecursionError):
        # some validators of fhir_core crash on a value of the wrong JSON type (a list or a number
        # where a url is expected: 'unhashable type', 'no attribute startswith') instead of failing it
        raise ValidateError(f"invalid {rtype}: an element has a value of the wrong type") from None
    for (rt, element), allowed in _REQUIRED_CODES.items():
        if rt == rtype and element in resource and resource[element] not in allowed:
            raise ValidateError(f"invalid {rtype}: {element} outside its required value set")
    return resource


def is_resource_type(name: str) -> bool:
    """True when ``name`` is a FHIR R4B resource type."""
    try:
        _model(name)
    except ValidateError:
        return False
    return True


def canonical_json(resource: JSON) -> str:
    """Stable JSON text (sorted keys, no spaces) used for hashing and change detection."""
    return json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

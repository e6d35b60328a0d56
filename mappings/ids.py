"""Deterministic resource ids: a hash of resource type + identifying parts.

A replay of the same message must produce the same ids (the FHIR PUT and the Kafka key), so ids
are never random and never depend on the wall clock.
"""

from __future__ import annotations

import hashlib

ID_LENGTH = 32  # hex characters of sha256 kept (128 bits): FHIR ids allow up to 64 of [A-Za-z0-9.-]
_SEP = "\x1f"  # unit separator: cannot occur in an unescaped HL7 value that matters here


def stable_id(resource_type: str, *parts: str) -> str:
    """``sha256(resource_type + parts)`` as 32 lowercase hex characters (a valid FHIR id)."""
    text = _SEP.join((resource_type, *parts))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def ref(resource_type: str, rid: str) -> dict[str, str]:
    """A literal FHIR Reference ``{"reference": "Type/id"}``."""
    return {"reference": f"{resource_type}/{rid}"}


def ref_to(resource: dict[str, object]) -> dict[str, str]:
    """A Reference to a resource built by this package (it always has resourceType and id)."""
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}

"""Pivot mappings: HL7v2 ADT -> FHIR R4 in three layers (datatypes -> segments -> messages).

Public API (used by the gateway)::

    Profiles.load(path, default_timezone) / .for_message(msg) -> Profile
    IdentifierSystems.load(path)
    MapContext(profile, systems, received_at)
    check_supported(msg)              # UnsupportedError 200/201 (ACK AR)
    check_required(msg, profile.relax)  # StructureError 100/101 (ACK AE, enhanced CE)
    map_message(msg, ctx) -> MapResult  # MapError / ValidateError (ACK AE)

See mappings/README.md for the file formats, code systems and deviations from the IG.
"""

from mappings.codemaps import check_all as _check_codemaps
from mappings.config import IdentifierSystems, Profile, Profiles
from mappings.context import MapContext, MapResult
from mappings.ids import stable_id
from mappings.messages import check_required, check_supported, map_message
from mappings.structure import structure_checks as _check_structures

_check_codemaps()  # every code map is loaded and checked at import (start-up)
_check_structures()  # every supported structure has its requirements (required-structure.json)

__all__ = ["IdentifierSystems", "MapContext", "MapResult", "Profile", "Profiles", "check_required", "check_supported",
           "map_message", "stable_id"]

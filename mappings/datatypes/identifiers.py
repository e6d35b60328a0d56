"""CX -> Identifier, HD -> system URI, and the NAM rule (DOMAIN.md, Identity).

IG rows: datatypes/CX--Identifier.csv (CX-1 value, CX-4 system, CX-5 type, CX-7/CX-8 period),
datatypes/HD--Identifier.csv (HD-2/HD-3 universal id -> urn:oid / urn:uuid / URI).
"""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo

from gateway.errors import Location
from gateway.hl7v2.tokenizer import Rep
from mappings.codemaps import codemap
from mappings.config import IDENTITY, IdentifierSystems
from mappings.datatypes.primitives import dtm, value

JSON = dict[str, Any]
NAM_SYSTEM: str = IDENTITY["nam_system"]
NAM_TYPES = frozenset(IDENTITY["nam_types"])
NAM_AUTHORITIES = frozenset(IDENTITY["nam_authorities"])
_NAM_PATTERN = re.compile(IDENTITY["nam_pattern"])
MR_TYPES = frozenset(IDENTITY["mr_types"])
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_UNIVERSAL_PREFIX = {"ISO": "urn:oid:", "UUID": "urn:uuid:", "URI": "", "URL": ""}


def hd_system(rep: Rep, comp: int, systems: IdentifierSystems, default_authority: str, *,
              visit: bool = False) -> str:
    """System URI of the HD in component ``comp`` (subcomponents namespace, universal id, type).

    Order: configured namespace id; HD-2 by HD-3 (ISO -> urn:oid:, UUID -> urn:uuid:, URI as is);
    ``urn:pivot:id:<namespace>``; the sender's site when no authority is sent at all.
    """
    namespace = value(rep.get(comp, 1))
    universal = value(rep.get(comp, 2))
    kind = value(rep.get(comp, 3)).upper()
    if namespace and namespace in (systems.visit_systems if visit else systems.systems):
        return systems.visit_system(namespace) if visit else systems.system(namespace)
    prefix = _UNIVERSAL_PREFIX.get(kind)
    if universal and prefix is not None and ":" in prefix + universal and not any(c.isspace() for c in universal):
        return prefix + universal
    authority = namespace or universal or default_authority
    return systems.visit_system(authority) if visit else systems.system(authority)


def authority(rep: Rep, comp: int = 4) -> str:
    """The assigning authority's namespace id (or universal id) of a CX-like repetition."""
    return value(rep.get(comp, 1)) or value(rep.get(comp, 2))


def is_nam(rep: Rep) -> bool:
    """A PID-3 repetition that carries the NAM: type JHN, or authority in the NAM authority list."""
    return value(rep.get(5)).upper() in NAM_TYPES or authority(rep).upper() in NAM_AUTHORITIES


def well_formed_nam(text: str) -> bool:
    """4 letters + 8 digits (the NAM shape only; see :func:`valid_nam` for the full check)."""
    return bool(_NAM_PATTERN.fullmatch(text.replace(" ", "").upper()))


_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def valid_nam(text: str) -> bool:
    """A NAM that can be an identity key (DOMAIN.md): 4 letters + 8 digits ``LLLL YY MM DD NN`` whose
    month is 01–12 (men) or 51–62 (women: month + 50) and whose day exists in that month (29 February
    only when YY is a multiple of 4: the century is not encoded). A NAM failing this is never used as
    an identity key and never drives the Patient id."""
    nam = text.replace(" ", "").upper()
    if not _NAM_PATTERN.fullmatch(nam):
        return False
    year, month, day = int(nam[4:6]), int(nam[6:8]), int(nam[8:10])
    if month > 50:
        month -= 50
    if not 1 <= month <= 12 or day < 1:
        return False
    if month == 2 and day == 29:
        return year % 4 == 0
    return day <= _DAYS[month - 1]


def is_nam_identifier(ident: JSON) -> bool:
    """An Identifier in the NAM system (valid or not)."""
    return ident.get("system") == NAM_SYSTEM


def identifier_type(code: str) -> JSON | None:
    """CX-5 -> Identifier.type (v2-0203; unknown codes kept as text per codemaps/identifier-type)."""
    return codemap("identifier-type").concept(code)


def cx_to_identifier(rep: Rep, systems: IdentifierSystems, default_authority: str, zone: ZoneInfo,
                     where: Location, *, visit: bool = False, nam: bool = True) -> JSON | None:
    """CX -> Identifier (CX-1 value, CX-4 system, CX-5 type, CX-7/8 period); None without CX-1.

    With ``nam`` (PID-3, MRG-1), a NAM repetition gets the Canadian Baseline system and type JHN.
    ``visit`` selects the visit-number system family (PV1-19).
    """
    val = value(rep.get(1))
    if not val:
        return None
    type_code = value(rep.get(5))
    if nam and is_nam(rep):
        ident: JSON = {"type": {"coding": [{"system": _V2_0203, "code": IDENTITY["nam_type"]}]},
                       "system": NAM_SYSTEM, "value": val.replace(" ", "").upper()}
    else:
        ident = {}
        concept = identifier_type(type_code)
        if concept is not None:
            ident["type"] = concept
        ident["system"] = hd_system(rep, 4, systems, default_authority, visit=visit)
        ident["value"] = val
    start, end = value(rep.get(7)), value(rep.get(8))
    if start or end:
        period: JSON = {}
        if start:
            period["start"] = dtm(start, zone, where)
        if end:
            period["end"] = dtm(end, zone, where)
        ident["period"] = period
    return ident


def identifier_key(ident: JSON) -> str:
    """``system|value`` of an Identifier: the input of deterministic ids."""
    return f"{ident.get('system', '')}|{ident.get('value', '')}"


def type_code(ident: JSON) -> str:
    codings = ident.get("type", {}).get("coding", [])
    return str(codings[0].get("code", "")) if codings else ""

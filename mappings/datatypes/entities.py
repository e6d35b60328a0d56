"""Datatypes that become resources of their own: XCN -> Practitioner, XON/HD -> Organization,
PL -> Location. Ids are deterministic (mappings.ids).

IG rows: datatypes/XCN--Practitioner.csv (XCN-1 identifier, XCN-9 system, XCN-13 type, XCN-2..6
name), XON--Organization.csv (XON-1 name, XON-10 identifier, XON-6 system), PL--Location.csv.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Rep
from mappings.config import IDENTITY, IdentifierSystems, uri_part
from mappings.datatypes.identifiers import hd_system, identifier_key, identifier_type
from mappings.datatypes.memo import Memo, cached
from mappings.datatypes.primitives import value
from mappings.ids import stable_id

JSON = dict[str, Any]
_XCN, _XON, _PL = Memo(), Memo(), Memo()  # pure conversions of repeated values (mappings/datatypes/memo.py)


def xcn_to_practitioner(rep: Rep, systems: IdentifierSystems, site: str) -> JSON | None:
    """:func:`convert_xcn`, memoized (a fresh copy each call)."""
    return cached(_XCN, (rep.key(), site), lambda: convert_xcn(rep, systems, site), systems)  # type: ignore[no-any-return]


def convert_xcn(rep: Rep, systems: IdentifierSystems, site: str) -> JSON | None:
    """XCN -> Practitioner: identifier XCN-1 (system from XCN-9, e.g. CMQ licence; type XCN-13),
    name XCN-2.1 family, XCN-3/XCN-4 given, XCN-5 suffix, XCN-6 prefix. Id: identifier system|value,
    else the site and name. None when the XCN has neither id nor name."""
    number, family = value(rep.get(1)), value(rep.get(2, 1))
    given = [g for g in (value(rep.get(3)), value(rep.get(4))) if g]
    if not number and not family and not given:
        return None
    practitioner: JSON = {"resourceType": "Practitioner", "id": ""}
    if number:
        ident: JSON = {}
        concept = identifier_type(value(rep.get(13)))
        if concept is not None:
            ident["type"] = concept
        ident["system"] = hd_system(rep, 9, systems, site)
        ident["value"] = number
        practitioner["identifier"] = [ident]
        practitioner["id"] = stable_id("Practitioner", identifier_key(ident))
    else:
        practitioner["id"] = stable_id("Practitioner", "name", site, family, *given)
    if family or given:
        name: JSON = {}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        prefix, suffix = value(rep.get(6)), value(rep.get(5))
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        practitioner["name"] = [name]
    return practitioner


def xon_to_organization(rep: Rep, systems: IdentifierSystems, site: str) -> JSON | None:
    """:func:`convert_xon`, memoized (a fresh copy each call)."""
    return cached(_XON, (rep.key(), site), lambda: convert_xon(rep, systems, site), systems)  # type: ignore[no-any-return]


def convert_xon(rep: Rep, systems: IdentifierSystems, site: str) -> JSON | None:
    """XON -> Organization: XON-1 name; identifier XON-10 (v2.5+) or XON-3 (v2.3), system from XON-6
    when sent, else ``urn:pivot:org:<site>``. Id from the identifier, else the site and name."""
    name = value(rep.get(1))
    number = value(rep.get(10)) or value(rep.get(3))
    if not name and not number:
        return None
    org: JSON = {"resourceType": "Organization", "id": ""}
    if number:
        sent = value(rep.get(6, 1)) or value(rep.get(6, 2))
        system = (hd_system(rep, 6, systems, site) if sent
                  else IDENTITY["organization_prefix"] + uri_part(site or "unknown"))
        ident = {"system": system, "value": number}
        org["identifier"] = [ident]
        org["id"] = stable_id("Organization", identifier_key(ident))
    else:
        org["id"] = stable_id("Organization", "name", site, name)
    org["active"] = True
    if name:
        org["name"] = name
    return org


def sender_organization(facility: str, universal: str = "") -> JSON:
    """The sending facility (MSH-4.1, alias MSH-4.2) as an Organization in ``urn:pivot:sender``."""
    system = IDENTITY["sender_system"]
    org: JSON = {"resourceType": "Organization", "id": stable_id("Organization", system, facility),
                 "identifier": [{"system": system, "value": facility or "unknown"}], "active": True,
                 "name": facility or "unknown"}
    if universal:
        org["alias"] = [universal]
    return org


_PL_LEVELS = (  # PL component, physical type (location-physical-type), label
    (3, "bd"), (2, "ro"), (1, "wa"), (8, "lvl"), (7, "bu"),
)
_PHYSICAL = "http://terminology.hl7.org/CodeSystem/location-physical-type"


def pl_to_location(rep: Rep, site: str) -> JSON | None:
    """:func:`convert_pl`, memoized (a fresh copy each call)."""
    return cached(_PL, (rep.key(), site), lambda: convert_pl(rep, site))  # type: ignore[no-any-return]


def convert_pl(rep: Rep, site: str) -> JSON | None:
    """PL -> one Location for the most specific level sent (bed, room, point of care, floor,
    building): identifier = the PL components joined with '^' in ``urn:pivot:location:<facility>``,
    name = the non-empty components joined with ' ', physicalType = that level. PL-4 (facility)
    defaults to the sender's site. None when PL has no location component."""
    parts = [value(rep.get(i, 1)) for i in (1, 2, 3, 7, 8)]
    if not any(parts):
        return None
    facility = value(rep.get(4, 1)) or value(rep.get(4, 2)) or site
    system = IDENTITY["location_prefix"] + uri_part(facility or "unknown")
    key = "^".join(parts).rstrip("^")
    level = next(code for comp, code in _PL_LEVELS if value(rep.get(comp, 1)))
    loc: JSON = {"resourceType": "Location", "id": stable_id("Location", system, key),
                 "identifier": [{"system": system, "value": key}], "status": "active",
                 "name": " ".join(p for p in (facility, *parts) if p), "mode": "instance",
                 "physicalType": {"coding": [{"system": _PHYSICAL, "code": level}]}}
    description = value(rep.get(9))
    if description:
        loc["description"] = description
    return loc

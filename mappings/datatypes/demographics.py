"""XPN -> HumanName, XAD -> Address, XTN -> ContactPoint.

IG rows: datatypes/XPN--HumanName.csv, XAD--Address.csv, XTN--ContactPoint.csv, with the name
type (HL70200), address type (HL70190) and telecom use/equipment (HL70201/HL70202) code maps.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Rep
from mappings.codemaps import codemap
from mappings.datatypes.primitives import value

JSON = dict[str, Any]


def _nonempty(*parts: str) -> list[str]:
    return [p for p in (value(x) for x in parts) if p]


def xpn_to_human_name(rep: Rep) -> JSON | None:
    """XPN -> HumanName: XPN-1.1 family, XPN-2 + XPN-3 given, XPN-4 (and XPN-6 degree) suffix,
    XPN-5 prefix, XPN-7 use (name-use map). None when the name has no family, given or text."""
    family = value(rep.get(1, 1))
    given = _nonempty(rep.get(2), rep.get(3))
    prefix = _nonempty(rep.get(5))
    suffix = _nonempty(rep.get(4), rep.get(6))
    if not family and not given:
        return None
    name: JSON = {}
    use = codemap("name-use").get(value(rep.get(7)))
    if use is not None:
        name["use"] = use.code
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    if prefix:
        name["prefix"] = prefix
    if suffix:
        name["suffix"] = suffix
    return name


def xad_to_address(rep: Rep) -> JSON | None:
    """XAD -> Address: XAD-1.1 + XAD-2 lines, XAD-3 city, XAD-4 state, XAD-5 postal code, XAD-6 country,
    XAD-7 use/type (address-use, address-type maps), XAD-9 district. None when empty."""
    lines = _nonempty(rep.get(1, 1), rep.get(2))
    city, state, postal = value(rep.get(3)), value(rep.get(4)), value(rep.get(5))
    country, district = value(rep.get(6)), value(rep.get(9))
    if not (lines or city or state or postal or country or district):
        return None
    addr: JSON = {}
    kind = value(rep.get(7))
    use, atype = codemap("address-use").get(kind), codemap("address-type").get(kind)
    if use is not None:
        addr["use"] = use.code
    if atype is not None:
        addr["type"] = atype.code
    if lines:
        addr["line"] = lines
    if city:
        addr["city"] = city
    if district:
        addr["district"] = district
    if state:
        addr["state"] = state
    if postal:
        addr["postalCode"] = postal
    if country:
        addr["country"] = country
    return addr


def _phone_number(rep: Rep) -> str:
    unformatted = value(rep.get(12))
    if unformatted:
        return unformatted
    country, area, local, ext = (value(rep.get(i)) for i in (5, 6, 7, 8))
    if local:
        number = " ".join(p for p in (f"+{country}" if country else "", area, local) if p)
        return f"{number} x{ext}" if ext else number
    return value(rep.get(1))


def xtn_to_contact_point(rep: Rep, default_use: str = "") -> JSON | None:
    """XTN -> ContactPoint: system from XTN-3 (email when XTN-4 is valued), use from XTN-2 (else
    ``default_use``: home for PID-13, work for PID-14), value XTN-4 / XTN-12 / XTN-5..8 / XTN-1."""
    equipment = value(rep.get(3))
    email = value(rep.get(4))
    target = codemap("telecom-equipment").get(equipment)
    system = target.code if target is not None else ("email" if email else "phone")
    number = email if system == "email" and email else _phone_number(rep)
    if not number:
        return None
    point: JSON = {"system": system, "value": number}
    use = codemap("telecom-use").get(value(rep.get(2)))
    if equipment.upper() == "CP":
        point["use"] = "mobile"
    elif use is not None:
        point["use"] = use.code
    elif default_use:
        point["use"] = default_use
    return point

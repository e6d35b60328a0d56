"""Drug codes (CWE -> CodeableConcept with DIN and ATC) and order numbers (EI -> Identifier).

IG rows: datatypes/CWE--CodeableConcept.csv (CWE-1/2/3 -> coding[1], CWE-4/5/6 -> coding[2],
CWE-9 -> text) and datatypes/EI--Identifier-System.csv (EI-1 value, EI-2..4 -> system). Drug code
systems are named by codemaps/drug-coding-systems.json: ``DIN``/``HC-DIN``… -> the FHIR
NamingSystem ``http://hl7.org/fhir/NamingSystem/ca-hc-din``, ``ATC``/``WHOATC`` -> the WHO ATC URI.
A DIN is 8 digits (a DIN sent as a number, without its leading zeros, is padded); anything else
coded DIN is MapError 103 ("table value not found") at the field. The ATC class is the one the
message sends (coding 2, or coding 1 coded ATC) when valid, else the one of codemaps/din-atc.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import Location, MapError
from gateway.hl7v2.tokenizer import Rep
from mappings.config import IdentifierSystems, uri_part
from mappings.datatypes.coded import coding_system
from mappings.datatypes.primitives import value
from mappings.pharmacy.codemaps import ATC_SYSTEM, DIN_SYSTEM, din_table, drug_systems, valid_atc

JSON = dict[str, Any]
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ORDER_PREFIX = "urn:pivot:order:"
RX_PREFIX = "urn:pivot:rx:"


@dataclass(frozen=True, slots=True)
class Drug:
    """A drug as mapped: the CodeableConcept, its DIN and ATC code ('' when unknown)."""

    concept: JSON
    din: str
    atc: str


def drug_system(name: str) -> str:
    """System URI of a drug code system name (DIN, ATC…; others by the general table)."""
    key = value(name).upper()
    if not key:
        return ""
    return drug_systems().get(key) or coding_system(key)


def _din(code: str, where: Location) -> str:
    din = code.replace(" ", "").replace("-", "")
    if din.isdigit() and len(din) < 8:
        din = din.zfill(8)
    table = din_table()
    if not table.pattern.fullmatch(din):
        raise MapError("drug code is not a DIN (8 digits)", hl7_code="103", location=where)
    if table.reject_unknown and table.atc(din) is None:
        raise MapError("DIN not in the DIN table", hl7_code="103", location=where)
    return din


def _coding(system: str, code: str, display: str) -> JSON:
    out: JSON = {}
    if system:
        out["system"] = system
    out["code"] = " ".join(code.split())
    if display:
        out["display"] = display
    return out


def cwe_to_drug(rep: Rep | None, where: Location) -> Drug:
    """CWE (RXE-2, RXD-2, RXA-5) -> Drug (see module doc). MapError 101 when the field carries no
    code and no text, 103 when a DIN is malformed (or unknown, under the ``reject`` policy)."""
    if rep is None:
        raise MapError("drug code missing", hl7_code="101", location=where)
    codings: list[JSON] = []
    din = atc = ""
    for comp in (1, 4):
        code, display = value(rep.get(comp)), value(rep.get(comp + 1))
        if not code:
            continue
        system = drug_system(rep.get(comp + 2))
        if system == DIN_SYSTEM:
            code = _din(code, where)
            din = din or code
        elif system == ATC_SYSTEM:
            code = code.upper()
            if valid_atc(code) and not atc:
                atc = code
        codings.append(_coding(system, code, display))
    if din and not atc:
        known = din_table().atc(din)
        if known is not None:
            atc = known[0]
            codings.append(_coding(ATC_SYSTEM, atc, known[1]))
    text = value(rep.get(9)) or value(rep.get(2)) or value(rep.get(5))
    if not codings and not text:
        raise MapError("drug code missing", hl7_code="101", location=where)
    concept: JSON = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return Drug(concept, din, atc)


def ei_system(rep: Rep, systems: IdentifierSystems, default: str) -> str:
    """System of an EI: configured namespace (EI-2), else EI-3 by EI-4 (ISO -> urn:oid:, UUID ->
    urn:uuid:, URI as is), else ``urn:pivot:order:<namespace>``; ``default`` without any authority."""
    namespace, universal, kind = value(rep.get(2)), value(rep.get(3)), value(rep.get(4)).upper()
    if namespace and namespace in systems.systems:
        return systems.system(namespace)
    prefix = {"ISO": "urn:oid:", "UUID": "urn:uuid:", "URI": ""}.get(kind)
    if universal and prefix is not None and ":" in prefix + universal and " " not in universal:
        return prefix + universal
    authority = namespace or universal
    return ORDER_PREFIX + uri_part(authority) if authority else default


def ei_to_identifier(rep: Rep | None, systems: IdentifierSystems, default_system: str,
                     type_code: str) -> JSON | None:
    """EI -> Identifier typed ``type_code`` (v2-0203 PLAC / FILL); None without EI-1."""
    if rep is None or not value(rep.get(1)):
        return None
    return {"type": {"coding": [{"system": V2_0203, "code": type_code}]},
            "system": ei_system(rep, systems, default_system), "value": value(rep.get(1))}


def rx_system(site: str) -> str:
    """Namespace of a pharmacy's prescription numbers (RXE-15, RXD-7, ORC-3 without authority)."""
    return RX_PREFIX + uri_part(site or "unknown")


def order_system(site: str) -> str:
    """Namespace of order numbers sent without authority (ORC-2)."""
    return ORDER_PREFIX + uri_part(site or "unknown")

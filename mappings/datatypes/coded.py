"""CWE / CE / CNE -> CodeableConcept, coding-system names -> URIs.

IG row: datatypes/CWE--CodeableConcept.csv: CWE-1/2/3 -> coding[1] (code, display, system),
CWE-4/5/6 -> coding[2], CWE-9 -> text. System names per codemaps/coding-systems.json: listed
names, ``HL7nnnn`` -> ``http://terminology.hl7.org/CodeSystem/v2-nnnn``, any other name ->
``urn:pivot:codesystem:<name>`` (a stable, documented URI; the code is never dropped).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway.errors import ConfigError
from gateway.hl7v2.tokenizer import Rep
from mappings.codemaps import load_json
from mappings.config import uri_part
from mappings.datatypes.memo import Memo, cached
from mappings.datatypes.primitives import value

JSON = dict[str, Any]


def _load() -> tuple[dict[str, str], dict[str, str], str]:
    data = load_json("coding-systems.json")
    elements, prefixes, policy = data.get("elements"), data.get("prefixes"), data.get("unmapped")
    if not isinstance(elements, dict) or not isinstance(prefixes, dict) or not isinstance(policy, dict):
        raise ConfigError("code map coding-systems: needs elements, prefixes and unmapped")
    if policy.get("mode") != "prefix" or not isinstance(policy.get("prefix"), str):
        raise ConfigError("code map coding-systems: unmapped.mode must be 'prefix' with a 'prefix'")
    upper = {str(k).upper(): str(v) for k, v in elements.items()}
    return upper, {str(k).upper(): str(v) for k, v in prefixes.items()}, policy["prefix"]


_SYSTEMS, _PREFIXES, _UNKNOWN = _load()


@cache
def coding_system(name: str) -> str:
    """FHIR system URI for a v2 'name of coding system' (CWE-3); '' for an empty name."""
    key = name.strip().upper()
    if not key:
        return ""
    known = _SYSTEMS.get(key)
    if known is not None:
        return known
    for prefix, base in _PREFIXES.items():
        rest = key[len(prefix):]
        if key.startswith(prefix) and rest.isdigit():
            return base + rest.zfill(4)
    return _UNKNOWN + uri_part(name)


def _coding(code: str, display: str, system_name: str, default_system: str) -> JSON:
    out: JSON = {}
    system = coding_system(system_name) or default_system
    if system:
        out["system"] = system
    out["code"] = " ".join(code.split())  # FHIR code: no leading/trailing/double whitespace
    if display:
        out["display"] = display
    return out


_CWE = Memo()  # pure conversion of repeated codes (mappings/datatypes/memo.py)


def cwe_to_codeable_concept(rep: Rep | None, default_system: str = "") -> JSON | None:
    """:func:`convert_cwe`, memoized (a fresh copy each call)."""
    if rep is None:
        return None
    return cached(_CWE, (rep.key(), default_system), lambda: convert_cwe(rep, default_system))  # type: ignore[no-any-return]


def convert_cwe(rep: Rep | None, default_system: str = "") -> JSON | None:
    """CWE -> CodeableConcept (see module doc); None when the CWE is empty or null.

    ``default_system`` is used when CWE-3 is empty and the field is bound to a v2 table.
    A CWE with text only (no CWE-1) becomes ``{"text": …}``.
    """
    if rep is None:
        return None
    code, display = value(rep.get(1)), value(rep.get(2))
    codings = []
    if code:
        codings.append(_coding(code, display, value(rep.get(3)), default_system))
    alt = value(rep.get(4))
    if alt:
        codings.append(_coding(alt, value(rep.get(5)), value(rep.get(6)), ""))
    text = value(rep.get(9)) or ("" if codings else display)
    if not codings and not text:
        return None
    out: JSON = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out

"""NM, CQ, CWE units and TM: numbers, quantities, durations and times of day.

IG rows: datatypes/CQ--Quantity.csv (CQ-1 -> value, CQ-2 -> unit/code/system via CWE), and the
NM -> decimal rule of the FHIR primitive types (a value that is not a number is MapError 102,
"data type error", located at its field: never guessed, never dropped silently).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import Location, MapError
from gateway.hl7v2.tokenizer import Rep
from mappings.datatypes.coded import coding_system
from mappings.datatypes.primitives import value
from mappings.pharmacy.codemaps import UCUM, time_unit

JSON = dict[str, Any]
Number = int | float
_NM = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?")


def nm(text: str, where: Location) -> Number | None:
    """NM -> a JSON number (int when integral); None when empty; MapError 102 when not a number."""
    text = value(text)
    if not text:
        return None
    if not _NM.fullmatch(text):
        raise MapError("value is not a number", hl7_code="102", location=where)
    number = float(text)
    return int(number) if number.is_integer() and "." not in text else number


def quantity(amount: Number, code: str, text: str, system_name: str) -> JSON:
    """A Quantity: ``unit`` = the unit's text (else its code); ``code`` + ``system`` only when the
    unit's coding system is named (FHIR qty-3: a code needs its system)."""
    out: JSON = {"value": amount}
    unit = value(text) or value(code)
    if unit:
        out["unit"] = unit
    system = coding_system(value(system_name)) if value(system_name) else ""
    if system and value(code):
        out["system"] = system
        out["code"] = value(code)
    return out


def field_quantity(amount_text: str, unit: Rep | None, where: Location) -> JSON | None:
    """NM amount (e.g. RXD-4) + its CWE units field (RXD-5) -> Quantity; None without amount."""
    amount = nm(amount_text, where)
    if amount is None:
        return None
    if unit is None:
        return {"value": amount}
    return quantity(amount, unit.get(1), unit.get(2), unit.get(3))


def cq_to_quantity(rep: Rep | None, where: Location) -> JSON | None:
    """CQ -> Quantity (CQ-1 value, CQ-2 units as CWE subcomponents); None without a value."""
    if rep is None:
        return None
    amount = nm(rep.get(1), where)
    if amount is None:
        return None
    return quantity(amount, rep.get(2, 1), rep.get(2, 2), rep.get(2, 3))


def cq_to_duration(rep: Rep | None, where: Location) -> tuple[JSON, float | None] | None:
    """CQ of time (TQ1-6, TQ1-13) -> (Duration in UCUM, its length in days); the unit is read from
    codemaps/time-units.json (unknown units: kept as text, no length). None without a value."""
    if rep is None:
        return None
    amount = nm(rep.get(1), where)
    if amount is None:
        return None
    sent = value(rep.get(2, 1)) or value(rep.get(2, 2))
    known = time_unit(sent) if sent else None
    if known is None:
        out: JSON = {"value": amount}
        if sent:
            out["unit"] = sent
        return out, None
    code, days = known
    return {"value": amount, "unit": code, "system": UCUM, "code": code}, float(amount) * days


def tm_to_time(text: str, where: Location) -> str | None:
    """TM (``HHMM[SS]``, also ``HH:MM:SS`` as some senders write it) -> FHIR time ``hh:mm:ss``."""
    raw = value(text).replace(":", "")
    if not raw:
        return None
    m = _TM.fullmatch(raw)
    if m is None or int(m[1]) > 23 or int(m[2] or 0) > 59 or int(m[3] or 0) > 59:
        raise MapError("unreadable time of day", hl7_code="102", location=where)
    return f"{m[1]}:{m[2] or '00'}:{m[3] or '00'}"

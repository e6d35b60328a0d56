"""Pivot pharmacy mappings (issue #5): RDS^O13, RDE^O11/O25, RAS^O17 -> FHIR R4, in three layers.

    datatypes/   NM/CQ/TM quantities, drug CWE (DIN + ATC), EI order numbers, RPT/TQ timing
    segments/    ORC, TQ1, RXR, RXE, RXD, RXA, ZPR builders (PID/PD1/MSH: mappings.segments)
    messages.py  the message walk (which segment builds which resource: codemaps/messages.json)
    codemaps/    the tables, as data (routes, statuses, DIN -> ATC, high-risk ATC classes, policy)
    dpd.py       regenerates codemaps/din-atc.json from Health Canada's Drug Product Database

Public API::

    PHARMACY_TRIGGERS                      # {"RDS": {"O13": "RDS_O13"}, "RDE": {...}, "RAS": {...}}
    is_pharmacy(msg) -> bool               # MSH-9.1 is a pharmacy message code
    check_pharmacy_supported(msg)          # UnsupportedError 200/201 (ACK AR)
    map_pharmacy(msg, ctx) -> MapResult    # MapError / ValidateError (ACK AE), like map_message

See mappings/pharmacy/README.md for the fields, the policies and the differences with the IG and
the Microsoft converter.
"""

from gateway.hl7v2.tokenizer import Message
from mappings.pharmacy.codemaps import check_all as _check_codemaps
from mappings.pharmacy.messages import PHARMACY_TRIGGERS, map_pharmacy, structure_of

_check_codemaps()  # every pharmacy table is loaded and checked at import (start-up)


def is_pharmacy(msg: Message) -> bool:
    """True when MSH-9.1 names a pharmacy message (RDS, RDE, RAS), whatever the trigger."""
    return msg.message_code.strip().upper() in PHARMACY_TRIGGERS


def check_pharmacy_supported(msg: Message) -> None:
    """UnsupportedError (ACK AR) unless MSH-9 is a supported pharmacy type (200) and trigger (201)."""
    structure_of(msg)


__all__ = ["PHARMACY_TRIGGERS", "check_pharmacy_supported", "is_pharmacy", "map_pharmacy"]

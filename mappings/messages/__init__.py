"""Layer 3: message maps (which segments build which resources) and the engine that runs them."""

from gateway.hl7v2.tokenizer import Message
from mappings.messages.engine import map_message
from mappings.messages.tables import STRUCTURES, SUPPORTED, MessageMap, message_map
from mappings.pharmacy import check_pharmacy_supported, is_pharmacy
from mappings.pharmacy.messages import structure_of
from mappings.structure import check_structure


def check_supported(msg: Message) -> None:
    """Raise UnsupportedError (ACK AR) unless MSH-9 names a supported message type and trigger:
    hl7_code 200 at MSH-9 for an unknown message type, 201 at MSH-9.2 for an unknown trigger.
    Pharmacy messages (RDS^O13, RDE^O11/O25, RAS^O17) are checked by mappings.pharmacy."""
    if is_pharmacy(msg):
        check_pharmacy_supported(msg)
        return
    message_map(msg)


def check_required(msg: Message, relax: frozenset[str] = frozenset()) -> None:
    """StructureError (ACK AE/CE) when a supported message lacks a segment (100) or field (101) its
    structure requires (codemaps/required-structure.json); ``relax``: the sender profile's waivers."""
    structure = structure_of(msg).name if is_pharmacy(msg) else message_map(msg).structure
    check_structure(msg, structure, msg.trigger.strip().upper(), relax)


__all__ = ["STRUCTURES", "SUPPORTED", "MessageMap", "check_required", "check_supported", "map_message",
           "message_map"]

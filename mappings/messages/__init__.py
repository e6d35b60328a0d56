"""Layer 3: message maps (which segments build which resources) and the engine that runs them."""

from gateway.hl7v2.tokenizer import Message
from mappings.messages.engine import map_message
from mappings.messages.tables import STRUCTURES, SUPPORTED, MessageMap, message_map
from mappings.pharmacy import check_pharmacy_supported, is_pharmacy


def check_supported(msg: Message) -> None:
    """Raise UnsupportedError (ACK AR) unless MSH-9 names a supported message type and trigger:
    hl7_code 200 at MSH-9 for an unknown message type, 201 at MSH-9.2 for an unknown trigger.
    Pharmacy messages (RDS^O13, RDE^O11/O25, RAS^O17) are checked by mappings.pharmacy."""
    if is_pharmacy(msg):
        check_pharmacy_supported(msg)
        return
    message_map(msg)


__all__ = ["STRUCTURES", "SUPPORTED", "MessageMap", "check_supported", "map_message", "message_map"]

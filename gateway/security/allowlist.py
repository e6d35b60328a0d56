"""Per-sender allow-list: a sender identity may send only for its facilities and message kinds.

The identity is the client id of the HTTP token (``POST /hl7v2``) or the client an MLLP TLS
client certificate maps to (its CN listed in ``certificate_cns`` of the clients file). The entry
of that client (clients file, else static tokens file) lists:

- ``facilities``: MSH-4.1 values it may send for (``"*"`` = any);
- ``messages``: message kinds: ``adt`` (ADT), ``pharmacy`` (RDE, RDS, RAS, RGV, RRA, RRD, RRE,
  RRG, OMP, ORP), or a message code (``ORU``); ``"*"`` = any. Empty = ``adt``.

Then the identifiers the message writes must be of assigning authorities the sender owns
(authorities.py): else AR with ERR-3 ``204`` located at the field.

An empty identity is an anonymous sender the transport let in on purpose (HTTP with
``PIVOT_AUTH=none``, MLLP without a client certificate when ``PIVOT_AUTH=none`` or
``PIVOT_MLLP_ALLOW_ANONYMOUS=true``, file ingest by the operator): no allow-list applies
(``Security.authorize_sender`` refuses the other anonymous MLLP senders). A non-empty identity
that is unknown, or outside its entry, is refused: AR with ERR-3 ``207`` (table 0357 has no
security code; 207 "application internal error" is what HL7 2.x offers for "not processed by
policy") and a dead letter at stage ``forbidden``.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import UnsupportedError
from gateway.hl7v2.tokenizer import Message
from gateway.security.clients import Client, ClientRegistry

PHARMACY_CODES = frozenset({"RDE", "RDS", "RAS", "RGV", "RRA", "RRD", "RRE", "RRG", "OMP", "ORP"})


class ForbiddenError(UnsupportedError):
    """The sender may not send this message (facility or message kind outside its allow-list)."""

    code = 1350
    ack_code = "AR"
    hl7_code = "207"


def message_kind(message_code: str) -> str:
    """``adt``, ``pharmacy``, or the message code in lower case."""
    code = message_code.upper()
    if code == "ADT":
        return "adt"
    if code in PHARMACY_CODES:
        return "pharmacy"
    return code.lower()


class AllowList:
    """``authorize(identity, msg)`` raises ForbiddenError when the sender may not send ``msg``."""

    def __init__(self, registry: ClientRegistry,
                 authorities: Callable[[Client, Message], None] | None = None) -> None:
        self.registry = registry
        self.authorities = authorities  # SiteAuthorities.check: the identifiers' assigning authorities

    def authorize(self, identity: str, msg: Message) -> None:
        if not identity:
            return
        client = self.registry.sender(identity)
        if client is None:
            raise ForbiddenError("sender identity has no allow-list entry")
        facility = msg.sending_facility
        if "*" not in client.facilities and facility not in client.facilities:
            raise ForbiddenError("sender may not send for this MSH-4 facility")
        kinds = client.messages or frozenset({"adt"})
        kind = message_kind(msg.message_code)
        if "*" not in kinds and kind not in kinds and msg.message_code.lower() not in kinds:
            raise ForbiddenError(f"sender may not send {kind} messages")
        if self.authorities is not None:
            self.authorities(client, msg)

"""The one connector interface.

A connector takes raw HL7v2 bytes from its transport, hands each message to a :class:`Receiver`
(the gateway's intake) and returns the ACK(s) over its transport when it has a way back.
Connectors never parse, map or store anything themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message came from: transport name, peer (address, file name, topic) and identity.

    ``identity`` is the authenticated sender (HTTP token's client id, MLLP client certificate's
    client id); empty for an anonymous sender the transport accepted on purpose.
    """

    transport: str
    peer: str = ""
    identity: str = ""


@dataclass(slots=True)
class Reply:
    """The intake's answer to one message.

    ``acks`` are ER7 ACK messages to send back in order: one in original mode (AA/AE/AR); in
    enhanced mode the commit ACK (CA/CE/CR, if MSH-15 asks for it) then the application ACK
    (AA/AE/AR, if MSH-16 asks for it). ``code`` is the outcome: AA, AE or AR; ``duplicate`` is
    true for a resend of an already accepted message.
    """

    code: str
    acks: list[bytes] = field(default_factory=list)
    control_id: str = ""
    duplicate: bool = False
    error: str = ""
    transient: bool = False  # AR because storage is down: the sender (or connector) should retry


class Receiver(Protocol):
    """What a connector calls for every message (thread-safe, blocking until durable)."""

    def receive(self, raw: bytes, origin: Origin) -> Reply: ...

    def refuse(self, head: bytes, error: GatewayError, origin: Origin) -> Reply:
        """A frame the connector cannot pass on (oversize): AR, head kept as a dead letter."""
        ...


class Connector(Protocol):
    """One transport. ``start`` begins serving (returns when listening); ``stop`` drains and closes."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

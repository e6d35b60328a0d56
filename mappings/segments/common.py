"""What every segment builder reads: the message-level environment (Env)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from gateway.errors import Location, MapWarning
from gateway.hl7v2.tokenizer import Message, Segment
from mappings.config import IdentifierSystems
from mappings.datatypes.coded import cwe_to_codeable_concept
from mappings.datatypes.primitives import BadTimestamp, convert, unreadable, value

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Env:
    """Per-message, read-only inputs of the builders: the message, time zone, identifier systems,
    site code (sender profile, default MSH-4.1) and trigger event (MSH-9.2, else EVN-1); and the one
    output besides resources, ``warnings``: values dropped while the message is still accepted."""

    msg: Message
    zone: ZoneInfo
    systems: IdentifierSystems
    site: str
    trigger: str
    warnings: list[MapWarning] = field(default_factory=list)  # what was dropped (MapResult.warnings)

    def where(self, seg: Segment, field: int | None = None, comp: int | None = None) -> Location:
        """ERR-2 location: segment id, its sequence among segments with that id, field, component."""
        sequence = sum(1 for s in self.msg.segments[: seg.index + 1] if s.id == seg.id) or 1
        return Location(seg.id, sequence, field, comp)

    def time(self, seg: Segment, field: int, kind: str = "dateTime") -> str:
        """Field ``field`` (component 1: DTM, or TS-1 in v2.3–2.5) converted; '' when empty.
        MapError 102 naming the field when it cannot be read."""
        text = value(seg.get(field, 1))
        if not text:
            return ""
        try:
            return convert(text, self.zone, kind)
        except BadTimestamp as exc:  # the location only when it is needed
            raise unreadable(exc, self.where(seg, field)) from None


def cwe(seg: Segment, field: int, default_system: str = "") -> JSON | None:
    """First repetition of a CWE/CE field as a CodeableConcept (None when empty)."""
    return cwe_to_codeable_concept(seg.rep(field), default_system)

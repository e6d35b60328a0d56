"""What a mapping receives (MapContext) and returns (MapResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.errors import MapWarning
from mappings.config import IdentifierSystems, Profile

JSON = dict[str, Any]


@dataclass(slots=True)
class MapContext:
    """Sender profile, identifier systems and reception time of one message.

    ``received_at`` is informative only: the mapping never reads it (nor the wall clock), so the
    resources are a pure function of the message and the configuration.
    """

    profile: Profile
    systems: IdentifierSystems
    received_at: datetime


@dataclass(slots=True)
class MapResult:
    """Validated FHIR R4 resources (plain JSON), the Patient id (Kafka key), unmapped segment ids,
    the message's type and trigger (MSH-9.1, MSH-9.2) and sender (MSH-3|MSH-4) for the
    rules, and ``event_time``: the FHIR instant of EVN-2, else MSH-7 (the order in which the identity
    resolver applies messages to one resource; '' only when neither can be read). ``nulls``: per
    resource (``"Type/id"``), the element paths the message sent as ``""`` (delete), never inside a
    published resource: the resolver's merge applies them (mappings/merge.py). ``resolved``: set by the
    identity resolver, the rank of this resolution among all (every instance's): the store sink keeps,
    per resource, the copy of the latest resolution, whatever order the records reach it in."""

    resources: list[JSON] = field(default_factory=list)
    patient_id: str | None = None
    unmapped_segments: list[str] = field(default_factory=list)
    message_code: str = ""
    trigger: str = ""
    sender: str = ""
    control_id: str = ""
    event_time: str = ""
    nulls: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[MapWarning] = field(default_factory=list)  # ACK AA + ERR severity W, review entry
    resolved: int = 0  # the identity resolution's place in the shared order (gateway.identity; 0: not resolved)

"""Layer 3 data: supported messages and, per structure, which segment builds which resource.

Loaded from codemaps/messages.json and checked at import: every structure a trigger names exists,
and every segment a structure maps has a builder in mappings.messages.engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError, Location, UnsupportedError
from gateway.hl7v2.tokenizer import Message
from mappings.codemaps import load_json

BUILT_SEGMENTS = frozenset({"PID", "PD1", "NK1", "PV1", "PV2", "DG1", "MRG"})  # engine._HANDLERS keys


@dataclass(frozen=True, slots=True)
class MessageMap:
    """One message structure: segment id -> the resource type it builds."""

    structure: str
    segments: dict[str, str]


def _load() -> tuple[dict[str, dict[str, str]], dict[str, MessageMap], frozenset[str], frozenset[str],
                     frozenset[str]]:
    data: dict[str, Any] = load_json("messages.json")
    messages, structures = data.get("messages"), data.get("structures")
    if not isinstance(messages, dict) or not isinstance(structures, dict):
        raise ConfigError("messages.json: needs 'messages' and 'structures'")
    maps = {}
    for name, segs in structures.items():
        if not isinstance(segs, dict) or not set(segs) <= BUILT_SEGMENTS:
            raise ConfigError(f"messages.json: structure {name} maps a segment without builder")
        maps[name] = MessageMap(name, {str(k): str(v) for k, v in segs.items()})
    for code, triggers in messages.items():
        if not isinstance(triggers, dict) or any(s not in maps for s in triggers.values()):
            raise ConfigError(f"messages.json: message {code} names an unknown structure")
    return (messages, maps, frozenset(data.get("no_encounter_triggers", [])),
            frozenset(data.get("always_read", [])), frozenset(data.get("visit_number_required", [])))


SUPPORTED, STRUCTURES, NO_ENCOUNTER, ALWAYS_READ, VISIT_NUMBER_REQUIRED = _load()


def message_map(msg: Message) -> MessageMap:
    """The map of a supported message; UnsupportedError 200 (type) / 201 (trigger) otherwise."""
    triggers = SUPPORTED.get(msg.message_code.strip().upper())
    if triggers is None:
        raise UnsupportedError("unsupported message type", hl7_code="200", location=Location("MSH", 1, 9))
    structure = triggers.get(msg.trigger.strip().upper())
    if structure is None:
        raise UnsupportedError("unsupported event code", hl7_code="201", location=Location("MSH", 1, 9, 2))
    return STRUCTURES[structure]

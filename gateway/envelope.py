"""Envelopes of the Kafka/event-log topics (JSON Schemas in schemas/, checked in tests).

``fhir.<ResourceType>``: key = the resource's logical id; value = :func:`fhir_envelope`.
``deadletter``: value = the raw bytes; headers = :func:`deadletter_headers` (reason, stage…).
``hl7v2.in``: value = the raw bytes as received; headers = :func:`inbound_headers`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fhir_envelope(resource: dict[str, Any], *, site: str, control_id: str, sender: str,
                  received_at: str, resolved: int = 0) -> bytes:
    """The value of a ``fhir.<Type>`` record. ``resolved``: the identity resolution's rank (MapResult.resolved),
    0 for what no resolution produced (alerts, operations)."""
    head = envelope_head(site=site, control_id=control_id, sender=sender, received_at=received_at,
                         produced_at=now_iso())
    return envelope_text(head, dumps(resource), resolved)


def dumps(value: Any) -> str:
    """The envelopes' JSON text of ``value`` (compact, UTF-8 kept as is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_string = json.encoder.encode_basestring  # dumps(text) of a str, without building an encoder


def envelope_head(*, site: str, control_id: str, sender: str, received_at: str, produced_at: str) -> str:
    """The text of a ``fhir.<Type>`` envelope before its resource: the same for every resource of a message."""
    return (f'{{"schema_version":{SCHEMA_VERSION},"source_site":{_string(site)},"sender":{_string(sender)},'
            f'"msh10":{_string(control_id)},"received_at":{_string(received_at)},'
            f'"produced_at":{_string(produced_at)},"resource":')


def envelope_text(head: str, resource_json: str, resolved: int = 0) -> bytes:
    """:func:`fhir_envelope` of an already serialised resource (``dumps(resource)``) after its
    message's :func:`envelope_head`: byte for byte the same JSON, without serialising the resource
    again (the mapping worker serialises each resource once for its own envelope and the bundle)."""
    tail = f',"resolved":{resolved if type(resolved) is int else dumps(resolved)}}}' if resolved else "}"
    return (head + resource_json + tail).encode("utf-8")


def inbound_headers(*, sender: str, control_id: str, message_type: str, transport: str,
                    received_at: str, size: int) -> dict[str, str]:
    """Headers of an ``hl7v2.in`` record (ids and sizes only)."""
    return {"schema_version": str(SCHEMA_VERSION), "sender": sender, "msh10": control_id,
            "message_type": message_type, "transport": transport, "received_at": received_at,
            "size": str(size)}


def deadletter_headers(*, stage: str, code: int, hl7_code: str, reason: str, sender: str,
                       control_id: str, transport: str, source_ref: str = "") -> dict[str, str]:
    """Headers of a ``deadletter`` record; ``reason`` never contains field values."""
    return {"schema_version": str(SCHEMA_VERSION), "stage": stage, "code": str(code),
            "hl7_code": hl7_code, "reason": reason, "sender": sender, "msh10": control_id,
            "transport": transport, "source_ref": source_ref, "at": now_iso()}

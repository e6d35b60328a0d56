"""Envelopes of the Kafka/event-log topics (JSON Schemas in schemas/, checked in tests).

``fhir.<ResourceType>``: key = the resource's logical id; value = :func:`fhir_envelope`.
``deadletter``: value = the raw bytes; headers = :func:`deadletter_headers` (reason, stage…).
``hl7v2.in``: value = the raw bytes as received; headers = :func:`inbound_headers`.
"""

from __future__ import annotations

import functools
import json
import re
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


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # json.dumps builds one per call


def dumps(value: Any) -> str:
    """The envelopes' JSON text of ``value`` (compact, UTF-8 kept as is): ``json.dumps(value,
    ensure_ascii=False, separators=(",", ":"))`` with its encoder built once (a quarter of the cost
    of a ~1 KB resource; the encoder keeps no state between calls: safe in every thread)."""
    return _encode(value)


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


_HEAD_KEYS = ["schema_version", "source_site", "sender", "msh10", "received_at", "produced_at"]
_RESOURCE_KEY = ',"resource":'
_RESOLVED_TAIL = re.compile(r',"resolved":([1-9][0-9]{0,17})\}')


@functools.lru_cache(maxsize=64)  # a message's records share their head
def _is_head(text: str) -> bool:
    """Whether ``text`` + "}" is a flat object of exactly envelope_head's keys."""
    try:
        head = json.loads(text + "}")
    except ValueError:
        return False
    return isinstance(head, dict) and list(head) == _HEAD_KEYS and head["schema_version"] == SCHEMA_VERSION


def envelope_resource(value: bytes) -> tuple[str, int] | None:
    """Read side of :func:`envelope_text`: the resource's JSON text and the ``resolved`` rank of a
    ``fhir.<Type>`` envelope, without parsing the resource. None when ``value`` is not laid out as
    :func:`envelope_head` + resource + tail writes it (then parse it whole); raises UnicodeDecodeError
    on bytes that are not UTF-8. The head is parsed (a flat object of exactly envelope_head's keys),
    so ``,"resource":`` found in it is the key: its values are JSON strings, where a quote is escaped.
    A key after the resource (not envelope_text's) is not detected: the text returned then is not one
    JSON object, which its parser refuses (the store sink then parses that envelope whole)."""
    if not value.startswith(b'{"schema_version":'):
        return None
    text = value.decode()
    at = text.find(_RESOURCE_KEY)
    if at < 0 or not _is_head(text[:at]):
        return None
    tail = _RESOLVED_TAIL.fullmatch(text, max(text.rfind(',"resolved":'), 0))
    end = tail.start() if tail is not None else len(text) - 1
    resource = text[at + len(_RESOURCE_KEY):end]
    if not (resource.startswith("{") and resource.endswith("}") and text.endswith("}")):
        return None
    return resource, int(tail.group(1)) if tail is not None else 0


def inbound_headers(*, sender: str, control_id: str, message_type: str, transport: str,
                    received_at: str, size: int, deferred: bool = False) -> dict[str, str]:
    """Headers of an ``hl7v2.in`` record (ids and sizes only). ``deferred``: the intake acknowledged it
    stored without mapping it (enhanced mode, MSH-16 NE): the mapping worker maps it first and writes
    its review entries (header ``deferred: 1``)."""
    headers = {"schema_version": str(SCHEMA_VERSION), "sender": sender, "msh10": control_id,
               "message_type": message_type, "transport": transport, "received_at": received_at,
               "size": str(size)}
    if deferred:
        headers["deferred"] = "1"
    return headers


def deadletter_headers(*, stage: str, code: int, hl7_code: str, reason: str, sender: str,
                       control_id: str, transport: str, source_ref: str = "") -> dict[str, str]:
    """Headers of a ``deadletter`` record; ``reason`` never contains field values."""
    return {"schema_version": str(SCHEMA_VERSION), "stage": stage, "code": str(code),
            "hl7_code": hl7_code, "reason": reason, "sender": sender, "msh10": control_id,
            "transport": transport, "source_ref": source_ref, "at": now_iso()}

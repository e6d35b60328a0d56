"""MSH + EVN -> one Provenance per message; MSH-4 -> the sender Organization; meta.source.

IG rows: segments/MSH--Provenance-Source.csv, EVN--Provenance.csv. recorded = MSH-7 (never the
wall clock), occurredDateTime = EVN-6, activity = the trigger (v2-0003), agent = the sending
facility (author), entity = the message itself (identifier MSH-10 in the sender's message
namespace). Z-segments are carried verbatim as extensions: the only place raw text appears.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import Location, MapError
from gateway.hl7v2.tokenizer import Message, Segment
from mappings.config import uri_part
from mappings.datatypes.primitives import value
from mappings.ids import ref_to, stable_id
from mappings.segments.common import Env

JSON = dict[str, Any]
Z_SEGMENT_URL = "urn:pivot:extension:hl7v2-segment"
_AUTHOR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                       "code": "author", "display": "Author"}]}


def meta_source(msg: Message) -> str:
    """``urn:pivot:sender:<MSH-3.1>:<MSH-4.1>#<MSH-10>`` (each part percent-encoded)."""
    app, fac = uri_part(msg.sending_application or "unknown"), uri_part(msg.sending_facility or "unknown")
    return f"urn:pivot:sender:{app}:{fac}#{uri_part(msg.control_id)}"


def message_system(msg: Message) -> str:
    """Namespace of the sender's message control ids: ``urn:pivot:message:<MSH-3.1>:<MSH-4.1>``."""
    app, fac = uri_part(msg.sending_application or "unknown"), uri_part(msg.sending_facility or "unknown")
    return f"urn:pivot:message:{app}:{fac}"


def recorded(msg: Message, env: Env) -> str:
    """Provenance.recorded (instant) from MSH-7, else EVN-2; MapError 101 at MSH-7 when neither."""
    msh = msg.msh
    if value(msh.get(7, 1)):
        return env.time(msh, 7, "instant")
    evn = msg.first("EVN")
    if evn is not None and value(evn.get(2, 1)):
        return env.time(evn, 2, "instant")
    raise MapError("MSH-7 date/time of message is empty", hl7_code="101", location=Location("MSH", 1, 7))


def event_instant(msg: Message, env: Env) -> str:
    """When the event was recorded, as a FHIR instant: EVN-2 when it carries at least a full date,
    else MSH-7; '' when neither does. MapError 102 at EVN-2 when it cannot be read."""
    evn = msg.first("EVN")
    text = value(evn.get(2, 1)) if evn is not None else ""
    if evn is not None and len(text) >= 8:
        return env.time(evn, 2, "instant")
    text = value(msg.msh.get(7, 1))
    return env.time(msg.msh, 7, "instant") if len(text) >= 8 else ""


def z_segment_extension(seg: Segment) -> JSON:
    """A Z-segment kept verbatim (its ER7 text, escapes included) as a Provenance extension."""
    return {"url": Z_SEGMENT_URL, "valueString": seg.d.field.join(seg.fields)}


def msh_to_provenance(msg: Message, env: Env, targets: list[JSON], sender: JSON,
                      z_segments: list[Segment]) -> JSON:
    """MSH/EVN -> Provenance (see module doc). Id: hash of sender (MSH-3|MSH-4) + MSH-10."""
    prov: JSON = {"resourceType": "Provenance", "id": stable_id("Provenance", msg.sender, msg.control_id)}
    if z_segments:
        prov["extension"] = [z_segment_extension(s) for s in z_segments]
    prov["target"] = [ref_to(r) for r in targets]
    evn = msg.first("EVN")
    occurred = env.time(evn, 6) if evn is not None else ""
    if occurred:
        prov["occurredDateTime"] = occurred
    prov["recorded"] = recorded(msg, env)
    if env.trigger:
        prov["activity"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                                        "code": env.trigger}]}
    prov["agent"] = [{"type": _AUTHOR, "who": ref_to(sender)}]
    what: JSON = {"identifier": {"system": message_system(msg), "value": msg.control_id or "unknown"}}
    message_type = "^".join(p for p in (msg.message_code, msg.trigger, msg.structure) if p)
    if message_type:
        what["display"] = message_type
    prov["entity"] = [{"role": "source", "what": what}]
    return prov

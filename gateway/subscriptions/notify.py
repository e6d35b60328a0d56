"""Notification Bundles of the R4 Subscriptions Backport IG (``backport-subscription-notification-r4``).

Every notification — handshake, heartbeat, event-notification, and the answers of ``$events``
(query-event) and ``$status`` (query-status) — starts with a ``Parameters`` resource of the
``backport-subscription-status-r4`` profile::

    subscription                      valueReference  [base]/Subscription/[id]
    topic                             valueCanonical  the topic URL (topic-based subscriptions)
    status                            valueCode       requested | active | error | off
    type                              valueCode       handshake | heartbeat | event-notification | query-…
    events-since-subscription-start   valueString     the last event number given so far
    notification-event (per event)    part: event-number (valueString), timestamp (valueInstant),
                                            focus (valueReference, unless content is empty)
    error                             valueCodeableConcept (text: the last delivery error)

A subscriber that sees an ``event-number`` jump past the one it expected knows it missed events
and asks ``$events?eventsSinceNumber=…``. Notification Bundles are of type ``history``; with
``id-only`` content each event adds an entry with ``fullUrl`` and ``request``/``response`` only,
with ``full-resource`` the entry also holds the resource as it was at that version.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.fhirstore.dates import instant_text
from gateway.fhirstore.subscription_state import Event
from gateway.subscriptions.model import PROFILE_NOTIFICATION, PROFILE_STATUS

JSON = dict[str, Any]
ReadVersion = Callable[[Event], JSON | None]
_RESPONSE = {"POST": "201", "PUT": "200", "DELETE": "204"}


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """What the SubscriptionStatus says about one subscription."""

    sub_id: str
    topic: str | None
    status: str
    events_since: int
    error: str = ""


def _now() -> str:
    return instant_text(int(time.time() * 1000))


def status_parameters(base: str, info: StatusInfo, kind: str, events: list[Event], content: str) -> JSON:
    """The SubscriptionStatus (R4: Parameters) for one notification or query."""
    reference = {"reference": f"{base}/Subscription/{info.sub_id}"}
    params: list[JSON] = [{"name": "subscription", "valueReference": reference}]
    if info.topic:
        params.append({"name": "topic", "valueCanonical": info.topic})
    params += [{"name": "status", "valueCode": info.status}, {"name": "type", "valueCode": kind},
               {"name": "events-since-subscription-start", "valueString": str(info.events_since)}]
    for event in events:
        parts: list[JSON] = [{"name": "event-number", "valueString": str(event.number)},
                             {"name": "timestamp", "valueInstant": instant_text(event.at_ms)}]
        if content != "empty":
            parts.append({"name": "focus", "valueReference": {"reference": f"{base}/{event.rtype}/{event.rid}"}})
        params.append({"name": "notification-event", "part": parts})
    if info.error:
        params.append({"name": "error", "valueCodeableConcept": {"text": info.error}})
    return {"resourceType": "Parameters", "id": uuid.uuid4().hex, "meta": {"profile": [PROFILE_STATUS]},
            "parameter": params}


def _event_entry(base: str, event: Event, content: str, read_version: ReadVersion) -> JSON:
    url = event.rtype if event.method == "POST" else f"{event.rtype}/{event.rid}"
    entry: JSON = {"fullUrl": f"{base}/{event.rtype}/{event.rid}"}
    if content == "full-resource" and event.method != "DELETE":
        resource = read_version(event)
        if resource is not None:
            entry["resource"] = resource
    entry["request"] = {"method": event.method, "url": url}
    entry["response"] = {"status": _RESPONSE.get(event.method, "200"), "etag": f'W/"{event.version}"'}
    return entry


def notification_bundle(base: str, info: StatusInfo, kind: str, events: list[Event], content: str,
                        read_version: ReadVersion) -> JSON:
    """A ``history`` Bundle: the SubscriptionStatus first, then one entry per event (unless empty)."""
    status = status_parameters(base, info, kind, events, content)
    entries: list[JSON] = [{
        "fullUrl": f"urn:uuid:{status['id']}", "resource": status,
        "request": {"method": "GET", "url": f"{base}/Subscription/{info.sub_id}/$status"},
        "response": {"status": "200"},
    }]
    if content != "empty":
        entries += [_event_entry(base, event, content, read_version) for event in events]
    return {"resourceType": "Bundle", "id": uuid.uuid4().hex, "meta": {"profile": [PROFILE_NOTIFICATION]},
            "type": "history", "timestamp": _now(), "entry": entries}


def status_bundle(base: str, info: StatusInfo) -> JSON:
    """The answer of ``$status``: a ``searchset`` Bundle holding one SubscriptionStatus."""
    status = status_parameters(base, info, "query-status", [], "empty")
    return {"resourceType": "Bundle", "id": uuid.uuid4().hex, "type": "searchset", "timestamp": _now(),
            "total": 1, "entry": [{"fullUrl": f"urn:uuid:{status['id']}", "resource": status,
                                   "search": {"mode": "match"}}]}

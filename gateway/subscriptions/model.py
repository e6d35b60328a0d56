"""An R4 ``Subscription`` resource read into a checked :class:`SubscriptionSpec`.

Two styles, told apart per subscription:

- **topic-based (Backport IG)**: ``criteria`` is the canonical URL of one of our topics (or the
  resource claims the ``backport-subscription`` profile, or the payload carries the backport
  ``content`` extension). Filters: ``Subscription._criteria`` extensions ``backport-filter-criteria``
  (``CarePlan?patient=Patient/123``), each ANDed, names limited to the topic's ``canFilterBy``.
  Channel extensions: ``backport-heartbeat-period``, ``backport-timeout``, ``backport-max-count``;
  ``channel._payload`` extension ``backport-payload-content``: ``empty`` | ``id-only`` |
  ``full-resource`` (default ``id-only`` when a payload type is given, else ``empty``).
- **plain R4**: ``criteria`` is a search (``Communication?category=alert``); no payload → an
  empty POST to the endpoint; a payload type → ``PUT [endpoint]/[Type]/[id]`` with the resource.

Ours (``https://pivot.example.org/fhir/StructureDefinition/…``, published in
``schemas/subscriptions/``): ``subscription-owner`` (valueReference to the subscriber's
Organization) and ``subscription-program-wide`` (valueBoolean), see :mod:`.authz`.

Only ``rest-hook`` channels with JSON payloads are served. Problems raise
:class:`SubscriptionInvalid` naming the element, never its value (endpoints and headers may hold
secrets, criteria may hold patient ids).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from gateway.errors import StoreError, ValidateError
from gateway.fhirstore.dates import date_range
from gateway.fhirstore.extract import split_reference
from gateway.fhirstore.match import Matcher
from gateway.fhirstore.query import Params
from gateway.subscriptions.topics import Topic, criteria_topic, split_criteria

JSON = dict[str, Any]
Content = Literal["empty", "id-only", "full-resource"]
CONTENTS: tuple[str, ...] = ("empty", "id-only", "full-resource")
STATUSES: tuple[str, ...] = ("requested", "active", "error", "off")

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
PROFILE_SUBSCRIPTION = f"{BACKPORT}/backport-subscription"
PROFILE_NOTIFICATION = f"{BACKPORT}/backport-subscription-notification-r4"
PROFILE_STATUS = f"{BACKPORT}/backport-subscription-status-r4"
EXT_FILTER = f"{BACKPORT}/backport-filter-criteria"
EXT_HEARTBEAT = f"{BACKPORT}/backport-heartbeat-period"
EXT_TIMEOUT = f"{BACKPORT}/backport-timeout"
EXT_MAX_COUNT = f"{BACKPORT}/backport-max-count"
EXT_CONTENT = f"{BACKPORT}/backport-payload-content"

CANONICAL = "https://pivot.example.org/fhir"
EXT_OWNER = f"{CANONICAL}/StructureDefinition/subscription-owner"
EXT_PROGRAM_WIDE = f"{CANONICAL}/StructureDefinition/subscription-program-wide"

_JSON_PAYLOADS = ("application/fhir+json", "application/json", "application/json+fhir")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REFUSED_TYPES = frozenset({"Subscription"})  # subscribers never see each other's channels


class SubscriptionInvalid(ValidateError):
    """A Subscription we cannot serve; the message names the element (never its value)."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """Where and how notifications go. ``headers`` are secrets: kept out of ``repr``."""

    endpoint: str = field(repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    payload: str | None = None
    content: Content = "empty"
    heartbeat_s: int | None = None
    timeout_s: float | None = None
    max_count: int | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """A checked Subscription: what it listens to, where it delivers, who it belongs to."""

    id: str
    status: str
    backport: bool
    topic: Topic
    filters: tuple[Params, ...]
    channel: ChannelSpec
    owner: str | None  # id of the subscriber's Organization
    program_wide: bool = False
    end_ms: int | None = None

    def delivery_key(self) -> tuple[Any, ...]:
        """Everything but the status: a change here restarts delivery (with a new handshake)."""
        return (self.backport, self.topic.url, self.filters, self.channel, self.owner, self.program_wide,
                self.end_ms)


def _extensions(node: Any, url: str) -> list[JSON]:
    if not isinstance(node, dict) or not isinstance(node.get("extension"), list):
        return []
    return [e for e in node["extension"] if isinstance(e, dict) and e.get("url") == url]


def _one_value(node: Any, url: str, key: str, name: str) -> Any:
    found = _extensions(node, url)
    if len(found) > 1:
        raise SubscriptionInvalid(f"Subscription: at most one {name} extension")
    if not found:
        return None
    if key not in found[0]:
        raise SubscriptionInvalid(f"Subscription: the {name} extension needs {key}")
    return found[0][key]


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SubscriptionInvalid(f"Subscription.channel: {name} must be a positive integer")
    return value


def _headers(raw: Any) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SubscriptionInvalid("Subscription.channel.header must be a list of strings")
    out: list[tuple[str, str]] = []
    for n, line in enumerate(raw):
        name, sep, value = line.partition(":") if isinstance(line, str) else ("", "", "")
        if not sep or _HEADER_NAME.fullmatch(name.strip()) is None or any(c in value for c in "\r\n\0"):
            raise SubscriptionInvalid(f"Subscription.channel.header[{n}] must be 'Name: value'")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def _channel(resource: JSON, backport: bool) -> ChannelSpec:
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise SubscriptionInvalid("Subscription.channel is required")
    if channel.get("type") != "rest-hook":
        raise SubscriptionInvalid("Subscription.channel.type: only rest-hook is supported")
    endpoint = channel.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubscriptionInvalid("Subscription.channel.endpoint must be an http(s) URL")
    payload = channel.get("payload")
    if payload is not None and (not isinstance(payload, str)
                                or payload.split(";")[0].strip() not in _JSON_PAYLOADS):
        raise SubscriptionInvalid("Subscription.channel.payload: only application/fhir+json is supported")
    content = _one_value(channel.get("_payload"), EXT_CONTENT, "valueCode", "backport-payload-content")
    if content is None:
        content = ("id-only" if backport else "full-resource") if payload else "empty"
    if content not in CONTENTS:
        raise SubscriptionInvalid("Subscription.channel.payload content must be empty, id-only or full-resource")
    if content != "empty" and payload is None:
        raise SubscriptionInvalid("Subscription.channel.payload: a content other than empty needs a payload type")
    timeout = _positive_int(_one_value(channel, EXT_TIMEOUT, "valueUnsignedInt", "backport-timeout"), "timeout")
    return ChannelSpec(
        endpoint=str(endpoint), headers=_headers(channel.get("header")), payload=payload,
        content=cast(Content, content),
        heartbeat_s=_positive_int(_one_value(channel, EXT_HEARTBEAT, "valueUnsignedInt", "backport-heartbeat-period"),
                                  "heartbeat period"),
        timeout_s=float(timeout) if timeout is not None else None,
        max_count=_positive_int(_one_value(channel, EXT_MAX_COUNT, "valuePositiveInt", "backport-max-count"),
                                "max count"))


def _filter(text: Any, topic: Topic) -> Params | None:
    """One filter-criteria string checked against the topic; None when not acceptable."""
    if not isinstance(text, str):
        return None
    try:
        rtype, params = split_criteria(text, topic.resource)
        Matcher.check(rtype, params)
    except (ValueError, StoreError):
        return None
    names = {name.partition(":")[0] for name, _ in params}
    if rtype != topic.resource or not params or (topic.can_filter_by and not names <= topic.can_filter_by):
        return None
    return params


def _filters(resource: JSON, topic: Topic) -> tuple[Params, ...]:
    out: list[Params] = []
    for n, ext in enumerate(_extensions(resource.get("_criteria"), EXT_FILTER)):
        params = _filter(ext.get("valueString"), topic)
        if params is None:
            raise SubscriptionInvalid(f"Subscription.criteria filter {n}: not a filter this topic allows")
        out.append(params)
    return tuple(out)


def _topic(resource: JSON, topics: dict[str, Topic]) -> Topic:
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria:
        raise SubscriptionInvalid("Subscription.criteria is required")
    if criteria in topics:
        return topics[criteria]
    if criteria.startswith(("http://", "https://", "urn:")):
        raise SubscriptionInvalid("Subscription.criteria: unknown topic")
    try:
        topic = criteria_topic(criteria)
    except StoreError as exc:
        raise SubscriptionInvalid(f"Subscription.criteria: {exc.message}") from None
    except ValueError as exc:
        raise SubscriptionInvalid(f"Subscription.criteria: {exc}") from None
    if topic.resource in _REFUSED_TYPES:
        raise SubscriptionInvalid("Subscription.criteria: subscriptions to Subscription are not allowed")
    return topic


def _owner(resource: JSON) -> str | None:
    ref = _one_value(resource, EXT_OWNER, "valueReference", "subscription-owner")
    if ref is None:
        return None
    target = split_reference(ref.get("reference", "")) if isinstance(ref, dict) else None
    if target is None or target[0] != "Organization":
        raise SubscriptionInvalid("Subscription: subscription-owner must reference an Organization")
    return target[1]


def parse_subscription(resource: JSON, topics: dict[str, Topic]) -> SubscriptionSpec:
    """Read and check one Subscription resource (SubscriptionInvalid when it cannot be served)."""
    status = resource.get("status")
    if status not in STATUSES:
        raise SubscriptionInvalid("Subscription.status must be requested, active, error or off")
    topic = _topic(resource, topics)
    profiles = resource.get("meta", {}).get("profile", []) if isinstance(resource.get("meta"), dict) else []
    channel = resource.get("channel")
    backport = (topic.url in topics or PROFILE_SUBSCRIPTION in profiles
                or bool(isinstance(channel, dict) and _extensions(channel.get("_payload"), EXT_CONTENT)))
    program_wide = _one_value(resource, EXT_PROGRAM_WIDE, "valueBoolean", "subscription-program-wide")
    if program_wide is not None and not isinstance(program_wide, bool):
        raise SubscriptionInvalid("Subscription: subscription-program-wide must be a boolean")
    end = resource.get("end")
    try:
        end_ms = date_range(end)[0] if isinstance(end, str) else None
    except ValueError:
        raise SubscriptionInvalid("Subscription.end must be an instant") from None
    return SubscriptionSpec(id=str(resource.get("id")), status=str(status), backport=backport, topic=topic,
                            filters=_filters(resource, topic), channel=_channel(resource, backport),
                            owner=_owner(resource), program_wide=bool(program_wide), end_ms=end_ms)

"""Delivery to one subscriber: a thread per subscription, its queue being the unacknowledged events.

Loop: handshake if one is due (topic-based subscriptions being activated) → send the pending
events (up to ``max-count`` per Bundle for topic-based, one request per event for plain R4) → a
heartbeat when ``heartbeatPeriod`` passed without a notification → sleep until woken.

Failures (no answer, timeout, non-2xx) are retried with exponential backoff
(``RetryPolicy.initial_s`` × ``factor``ⁿ, capped at ``max_s``); after ``error_after`` consecutive
failures the Subscription goes to status ``error`` with the last error text (``HTTP 503``,
``ConnectError``: never a body, an endpoint or a header) and delivery goes on at the slow rate
``slow_s``. An error-state subscription with nothing to send probes with a heartbeat. The first
success puts it back to ``active`` and the events it missed follow, oldest first.

Headers from ``channel.header`` (e.g. ``Authorization``) are sent with every request and never
logged; nor is the endpoint (httpx's own request log lines from channel threads are filtered out,
since a webhook URL may carry a token).

Before every request the endpoint goes through the engine's :class:`~.endpoint.EndpointGuard`
(DNS looked up again, private addresses refused unless allowed) and the request goes to the
address that was checked; a refused endpoint is a failed attempt like any other
(``endpoint refused: loopback address``). Every event-notification, accepted or failed, is
reported to the engine (``ChannelHost.delivered``) for the audit trail.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from gateway.errors import DeliverError
from gateway.fhirstore.subscription_state import DeliveryState, Event
from gateway.subscriptions.endpoint import EndpointGuard, EndpointRefused
from gateway.subscriptions.model import SubscriptionSpec
from gateway.subscriptions.notify import StatusInfo, notification_bundle

log = logging.getLogger("pivot.subscriptions")
JSON = dict[str, Any]
FHIR_JSON = "application/fhir+json; charset=utf-8"
_RESERVED = frozenset({"content-type", "content-length", "host", "transfer-encoding"})


class _HideChannelRequests(logging.Filter):
    """Drop httpx/httpcore records emitted by channel threads (they name the endpoint URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith(THREAD_PREFIX)


THREAD_PREFIX = "pivot-subscription-"
_FILTER = _HideChannelRequests()
for _name in ("httpx", "httpcore.connection", "httpcore.connection_pool", "httpcore.http11", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_FILTER)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between failed attempts, and when a subscription turns to ``error``."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    error_after: int = 5
    slow_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Wait after the ``failures``-th consecutive failure."""
        if failures >= self.error_after:
            return self.slow_s
        return float(min(self.initial_s * self.factor ** max(failures - 1, 0), self.max_s))


class NotificationFailed(DeliverError):
    """One notification attempt failed; the message is safe to store and log (no content)."""


class ChannelHost(Protocol):
    """What a channel needs from the engine."""

    base_url: str
    state: DeliveryState
    guard: EndpointGuard

    def read_version(self, event: Event) -> JSON | None: ...

    def set_status(self, sub_id: str, status: str, error: str) -> None: ...

    def delivered(self, spec: SubscriptionSpec, kind: str, events: list[Event], error: str = "") -> None: ...


class Sender:
    """HTTP requests to one endpoint with the subscriber's headers, to checked addresses only."""

    def __init__(self, spec: SubscriptionSpec, default_timeout_s: float, guard: EndpointGuard) -> None:
        self._headers = [(k, v) for k, v in spec.channel.headers if k.lower() not in _RESERVED]
        self._guard = guard
        self._client = httpx.Client(timeout=spec.channel.timeout_s or default_timeout_s, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def send(self, method: str, url: str, body: JSON | None) -> None:
        """One request; NotificationFailed unless the endpoint answers 2xx.

        The endpoint's addresses are looked up and checked now; the request goes to the first that
        accepts a connection, with the endpoint's own Host header and TLS server name."""
        try:
            targets = self._guard.targets(url)
        except EndpointRefused as exc:
            raise NotificationFailed(f"endpoint refused: {exc.reason}") from None
        content = b""
        if body is not None:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        for n, target in enumerate(targets):
            headers = httpx.Headers(self._headers)
            headers["Host"] = target.host
            if body is not None:
                headers["Content-Type"] = FHIR_JSON
            extensions = {"sni_hostname": target.server_name} if target.server_name else None
            try:
                resp = self._client.request(method, target.url, content=content, headers=headers,
                                            extensions=extensions)
            except httpx.ConnectError:
                if n + 1 < len(targets):
                    continue  # nothing was sent: try the next address
                raise NotificationFailed("ConnectError") from None
            except httpx.HTTPError as exc:
                raise NotificationFailed(type(exc).__name__) from None
            if not 200 <= resp.status_code < 300:
                raise NotificationFailed(f"HTTP {resp.status_code}")
            return
        raise NotificationFailed("endpoint refused: no address")


class Channel(threading.Thread):
    """Delivers one subscription's notifications until stopped."""

    def __init__(self, spec: SubscriptionSpec, host: ChannelHost, policy: RetryPolicy, *, status: str,
                 handshake: bool, default_timeout_s: float = 10.0, default_max_count: int = 20) -> None:
        super().__init__(name=f"{THREAD_PREFIX}{spec.id}", daemon=True)
        self.spec = spec
        self.host = host
        self.policy = policy
        self.status = status
        self._needs_handshake = handshake and spec.backport
        self._timeout_s = default_timeout_s
        self._max_count = spec.channel.max_count or default_max_count
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._last_sent = time.monotonic()

    def wake(self) -> None:
        """New events are queued."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        sender = Sender(self.spec, self._timeout_s, self.host.guard)
        try:
            if not self.spec.backport and self.status == "requested":
                self._set_status("active", "")  # plain R4: no handshake
            self._loop(sender)
        finally:
            sender.close()

    def _loop(self, sender: Sender) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                busy = self._step(sender)
            except NotificationFailed as exc:
                self._failed(exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug or a state-file problem must not end delivery
                log.error("subscription %s: delivery step failed (%s)", self.spec.id, type(exc).__name__)
                self._stopping.wait(self.policy.slow_s)
                continue
            if not busy:
                self._wake.wait(self._idle_timeout())

    def _failed(self, reason: str) -> None:
        failures = self.host.state.failed(self.spec.id, reason)
        delay = self.policy.delay(failures)
        if failures >= self.policy.error_after and self.status != "error":
            self._set_status("error", f"{failures} delivery attempts failed; last: {reason}")
        log.warning("subscription %s: notification failed (%s), attempt %d, next in %.1fs", self.spec.id, reason,
                    failures, delay)
        self._stopping.wait(delay)

    def _idle_timeout(self) -> float | None:
        period = self.spec.channel.heartbeat_s
        if period is None or not self.spec.backport:
            return None
        return max(0.0, self._last_sent + period - time.monotonic())

    def _step(self, sender: Sender) -> bool:
        """Send what is due; True when something was sent (look again at once)."""
        if self._needs_handshake:
            self._send_bundle(sender, "handshake", [])
            self._needs_handshake = False
            self.host.state.succeeded(self.spec.id)
            log.info("subscription %s: handshake accepted", self.spec.id)
            self._set_status("active", "")
            return True
        events = self.host.state.pending(self.spec.id, self._max_count if self.spec.backport else 1)
        if events:
            try:
                if self.spec.backport:
                    self._send_bundle(sender, "event-notification", events)
                else:
                    self._send_plain(sender, events[0])
            except NotificationFailed as exc:
                self.host.delivered(self.spec, "event-notification", events, exc.message)
                raise
            self.host.state.ack(self.spec.id, events[-1].number)
            self.host.delivered(self.spec, "event-notification", events)
            log.info("subscription %s: delivered events %d-%d", self.spec.id, events[0].number, events[-1].number)
            self._set_status("active", "")
            return True
        period = self.spec.channel.heartbeat_s
        heartbeat_due = period is not None and time.monotonic() - self._last_sent >= period
        if self.spec.backport and (heartbeat_due or self.status == "error"):
            self._send_bundle(sender, "heartbeat", [])
            self.host.state.succeeded(self.spec.id)
            self._set_status("active", "")
            return True
        return False

    def _info(self) -> StatusInfo:
        counters = self.host.state.counters(self.spec.id)
        return StatusInfo(self.spec.id, None if self.spec.topic.adhoc else self.spec.topic.url, self.status,
                          counters.last_number if counters else 0)

    def _send_bundle(self, sender: Sender, kind: str, events: list[Event]) -> None:
        info = self._info()
        if kind == "handshake":
            info = StatusInfo(info.sub_id, info.topic, "requested" if self.status != "active" else "active",
                              info.events_since)
        bundle = notification_bundle(self.host.base_url, info, kind, events, self.spec.channel.content,
                                     self.host.read_version)
        sender.send("POST", self.spec.channel.endpoint, bundle)
        self._last_sent = time.monotonic()

    def _send_plain(self, sender: Sender, event: Event) -> None:
        """Plain R4 rest-hook: empty POST, or PUT [endpoint]/[Type]/[id] with the resource."""
        resource = self.host.read_version(event) if self.spec.channel.payload else None
        if resource is None:
            sender.send("POST", self.spec.channel.endpoint, None)
        else:
            sender.send("PUT", f"{self.spec.channel.endpoint.rstrip('/')}/{event.rtype}/{event.rid}", resource)
        self._last_sent = time.monotonic()

    def _set_status(self, status: str, error: str) -> None:
        if status == self.status or self._stopping.is_set():
            return
        log.info("subscription %s: status %s -> %s", self.spec.id, self.status, status)
        self.status = status
        self.host.set_status(self.spec.id, status, error)

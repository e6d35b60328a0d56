"""The subscription engine: store changes → matched, authorised, numbered events → channels.

    FhirStore ──listener──► queue ──► dispatcher thread ──► DeliveryState.record ──► Channel.wake
                                       │ Subscription written: (re)start or stop its channel
                                       │ other resource: topic test (previous/current version),
                                       │   filters, care-team rule, then one event per subscription

The store calls the listener after each committed write (upsert_many from the store sink, and
every HTTP write: create, update, delete, transaction, batch); the listener only queues. Criteria
are evaluated by :class:`~gateway.fhirstore.match.Matcher` on the version written (and on the
previous version for topics with ``queryCriteria.previous``, read back from the store's history).
Changes are handled in commit order by one thread, so a Subscription created before a write sees
that write. ``stop()`` handles every change already queued before it returns; a change committed
just before a crash (between COMMIT and its event being recorded) is not notified — the data is
in the store, a subscriber that suspects a loss can search it.

Endpoints (endpoint.py): a client's write of a Subscription whose ``channel.endpoint`` is not
http(s) or resolves to a loopback, link-local or private address is refused with 422 before it
is stored (a store write check, registered by ``start()``), unless ``allow_private``
(PIVOT_SUBSCRIPTION_ALLOW_PRIVATE); every delivery checks again. With ``audit`` (the gateway's
AuditTrail) every event-notification, accepted or failed, becomes an AuditEvent naming the
subscriber, the Patients of the events and their focus (references only).

Subscription status is written back to the Subscription resource (``status``, ``error``) when it
changes (requested → active after the handshake, active → error, error → active); those writes
are recognised by their version and do not restart delivery. A client's own create/update
(re)starts delivery: a handshake for topic-based subscriptions, event numbers going on from where
they were. An invalid Subscription is set to ``error`` with the reason and gets nothing. Status
``off`` stops delivery and events are not recorded; ``end`` in the past likewise.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import StoreError
from gateway.fhirstore import FhirStore, Outcome
from gateway.fhirstore.match import Matcher
from gateway.fhirstore.query import Params
from gateway.fhirstore.subscription_state import DeliveryState, Event
from gateway.security.audit_disclosure import notification_disclosure
from gateway.subscriptions.authz import UNREACHABLE, CareTeamAuthorizer, clients_of, unreachable
from gateway.subscriptions.channel import Channel, RetryPolicy
from gateway.subscriptions.endpoint import EndpointGuard, EndpointRefused, Resolver, system_resolver
from gateway.subscriptions.model import CONTENTS, SubscriptionInvalid, SubscriptionSpec, parse_subscription
from gateway.subscriptions.notify import StatusInfo, notification_bundle, status_bundle
from gateway.subscriptions.topics import TOPICS_DIR, Topic, load_topics

if TYPE_CHECKING:
    from gateway.security.audit_trail import AuditTrail

log = logging.getLogger("pivot.subscriptions")
JSON = dict[str, Any]
_INTERACTION = {"created": "create", "updated": "update", "deleted": "delete"}
_METHOD = {"create": "POST", "update": "PUT", "delete": "DELETE"}


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one accepted notification disclosed, for the audit trail (references only)."""

    sub_id: str
    owner: str | None  # the subscriber's Organization id
    kind: str  # event-notification
    focus: tuple[str, ...]  # Type/id/_history/version of each event
    content: str  # empty | id-only | full-resource


DeliveredHook = Callable[[Delivered], None]


@dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    """Settings of the engine (defaults suit production; tests shorten the delays)."""

    base_url: str  # public base of the FHIR endpoint, e.g. http://127.0.0.1:8080/fhir (fullUrls)
    state_path: Path  # subscriptions.sqlite, beside fhir.sqlite
    topics_dir: Path = TOPICS_DIR
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 10.0  # per request, unless the subscription sets backport-timeout
    max_count: int = 20  # events per notification, unless the subscription sets backport-max-count
    keep_events: int = 10_000  # acknowledged events kept per subscription for $events
    max_events_per_query: int = 1000
    on_delivered: DeliveredHook | None = None  # told of each accepted event-notification
    audit: AuditTrail | None = None  # an AuditEvent per event-notification, accepted or failed
    allow_private: bool = False  # PIVOT_SUBSCRIPTION_ALLOW_PRIVATE: endpoints on loopback/private addresses
    resolver: Resolver = system_resolver  # host, port → addresses (tests give their own)


class SubscriptionEngine:
    """Owns the subscriptions of one FHIR store: start() after the store opens, stop() before it closes."""

    def __init__(self, store: FhirStore, config: SubscriptionConfig) -> None:
        self.store = store
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self.topics: dict[str, Topic] = load_topics(config.topics_dir)
        self.state = DeliveryState(config.state_path, keep=config.keep_events)
        self.matcher = Matcher()
        self.authorizer = CareTeamAuthorizer(store)
        self.guard = EndpointGuard(config.allow_private, config.resolver)
        self._specs: dict[str, SubscriptionSpec] = {}
        self._channels: dict[str, Channel] = {}
        self._own_versions: set[tuple[str, int]] = set()
        self._lock = threading.RLock()
        self._queue: queue.Queue[list[Outcome] | None] = queue.Queue()
        self._pending = 0  # change lists queued and not yet processed
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the stored Subscriptions, resume their delivery, then follow the store's writes."""
        if self._thread is not None:
            return
        self.store.add_write_check("Subscription", self.check_write)
        self.store.add_listener(self._on_store_change)
        for resource in self._stored_subscriptions():
            self._apply(resource, resume=True)
        self._thread = threading.Thread(target=self._dispatch, name="pivot-subscriptions", daemon=True)
        self._thread.start()
        log.info("subscriptions: %d loaded, %d topics", len(self._specs), len(self.topics))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop following the store and every channel (undelivered events stay queued on disk)."""
        self.store.remove_listener(self._on_store_change)
        self.store.remove_write_check("Subscription", self.check_write)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.stop()
        for channel in channels:
            channel.join(timeout_s)
        self.matcher.close()
        self.state.close()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every change written so far has been turned into events; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def _stored_subscriptions(self) -> list[JSON]:
        out: list[JSON] = []
        params: list[tuple[str, str]] = [("_count", "1000"), ("_total", "none")]
        while True:
            _q, page = self.store.search("Subscription", params)
            out.extend(e.resource for e in page.entries if e.resource is not None)
            if page.next is None:
                return out
            params = [("_count", "1000"), ("_total", "none"), ("_page", page.next.encode())]

    def check_write(self, resource: JSON) -> None:
        """The store write check of Subscriptions: 422 when notifications may not go to the endpoint,
        or could never go anywhere (no owner, not program-wide: authz.UNREACHABLE)."""
        try:
            spec: SubscriptionSpec | None = parse_subscription(resource, self.topics)
        except SubscriptionInvalid:
            spec = None  # stored, then set to error by _apply (the reason in Subscription.error)
        if spec is not None and unreachable(spec):
            raise StoreError(UNREACHABLE, status=422, issue_code="invalid")
        channel = resource.get("channel")
        endpoint = channel.get("endpoint") if isinstance(channel, dict) else None
        if endpoint is None:
            return  # no channel or no endpoint: parse_subscription sets the Subscription to error
        try:
            self.guard.check(endpoint if isinstance(endpoint, str) else "")
        except EndpointRefused as exc:
            raise StoreError(exc.message, status=422, issue_code="invalid") from None

    # -- the store listener and the dispatcher ---------------------------------------------------
    def _on_store_change(self, changes: list[Outcome]) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(changes)

    def _dispatch(self) -> None:
        while True:
            changes = self._queue.get()
            if changes is None:
                return
            for change in changes:
                try:
                    self._handle(change)
                except Exception as exc:  # noqa: BLE001 - one bad change never stops the others
                    log.error("subscriptions: change of a %s not processed (%s)", change.rtype, type(exc).__name__)
            with self._idle:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()

    def _handle(self, change: Outcome) -> None:
        if change.rtype == "Subscription":
            self._subscription_changed(change)
            return
        with self._lock:
            specs = [s for s in self._specs.values() if s.topic.resource == change.rtype and self._live(s)]
        if specs:
            self._resource_changed(change, specs)

    def _live(self, spec: SubscriptionSpec) -> bool:
        return spec.status != "off" and (spec.end_ms is None or spec.end_ms > time.time() * 1000)

    # -- Subscription resources ------------------------------------------------------------------
    def _subscription_changed(self, change: Outcome) -> None:
        with self._lock:
            if (change.id, change.version) in self._own_versions:
                self._own_versions.discard((change.id, change.version))
                return
        if change.resource is None:
            self._stop_channel(change.id)
            with self._lock:
                self._specs.pop(change.id, None)
            self.state.forget(change.id)
            log.info("subscription %s: deleted", change.id)
            return
        self._apply(change.resource, resume=False)

    def _apply(self, resource: JSON, *, resume: bool) -> None:
        """Take a (new, updated or reloaded) Subscription into account."""
        sub_id = str(resource.get("id"))
        try:
            spec = parse_subscription(resource, self.topics)
        except SubscriptionInvalid as exc:
            self._stop_channel(sub_id)
            with self._lock:
                self._specs.pop(sub_id, None)
            log.warning("subscription %s: refused (%s)", sub_id, exc.message)
            if resource.get("status") != "error" or resource.get("error") != exc.message:
                self.set_status(sub_id, "error", exc.message)
            return
        self._stop_channel(sub_id)
        with self._lock:
            self._specs[sub_id] = spec
        if not self._live(spec):
            return
        counters = self.state.ensure(sub_id, int(time.time() * 1000))
        status = spec.status
        handshake = not (resume and status == "active")
        channel = Channel(spec, self, self.config.retry, status=status, handshake=handshake,
                          default_timeout_s=self.config.timeout_s, default_max_count=self.config.max_count)
        with self._lock:
            self._channels[sub_id] = channel
        channel.start()
        log.info("subscription %s: delivering (%s, %d events so far)", sub_id,
                 "topic-based" if spec.backport else "plain R4", counters.last_number)

    def _stop_channel(self, sub_id: str) -> None:
        with self._lock:
            channel = self._channels.pop(sub_id, None)
        if channel is not None:
            channel.stop()
            channel.join(self.config.timeout_s + 1)

    def set_status(self, sub_id: str, status: str, error: str) -> None:
        """Write ``status`` (and ``error``, or remove it) into the stored Subscription."""
        try:
            with self.store.writing() as writer:
                current = writer.read("Subscription", sub_id).resource or {}
                updated = {k: v for k, v in current.items() if k != "error"} | {"status": status}
                if error:
                    updated["error"] = error
                outcome = writer.put(updated)
                if outcome.changed:
                    with self._lock:
                        self._own_versions.add((sub_id, outcome.version))
        except StoreError:
            return  # deleted meanwhile
        with self._lock:
            spec = self._specs.get(sub_id)
            if spec is not None:
                self._specs[sub_id] = _with_status(spec, status)

    # -- other resources -------------------------------------------------------------------------
    def _resource_changed(self, change: Outcome, specs: list[SubscriptionSpec]) -> None:
        interaction = _INTERACTION[change.status]
        specs = [s for s in specs if interaction in s.topic.interactions]
        if not specs:
            return
        previous = None
        if interaction == "delete" or (interaction == "update" and any(s.topic.previous for s in specs)):
            previous = self._previous(change)
        focus = change.resource if change.resource is not None else previous
        if focus is None:
            return
        filtered = change.resource if change.resource is not None else previous
        before = self._evaluate(previous, [s.topic.previous for s in specs if s.topic.previous is not None]
                                + ([f for s in specs for f in s.filters] if filtered is previous else []))
        now = self._evaluate(change.resource, [s.topic.current for s in specs if s.topic.current is not None]
                             + ([f for s in specs for f in s.filters] if filtered is not previous else []))
        on_focus = now if filtered is not previous else before
        for spec in specs:
            topic = spec.topic
            prev_ok = before.get(_key(topic.previous)) if topic.previous is not None else None
            cur_ok = now.get(_key(topic.current)) if topic.current is not None else None
            if not topic.fires(interaction, prev_ok, cur_ok):
                continue
            if not all(on_focus.get(_key(f), False) for f in spec.filters):
                continue
            if not self.authorizer.allowed(spec, focus):
                continue
            number = self.state.record(spec.id, change.lu_ms, change.rtype, change.id, change.version,
                                       _METHOD[interaction])
            with self._lock:
                channel = self._channels.get(spec.id)
            if channel is not None:
                channel.wake()
            log.debug("subscription %s: event %d queued", spec.id, number)

    def _evaluate(self, resource: JSON | None, criteria: list[Params]) -> dict[_Key, bool]:
        """Each criteria tested on ``resource`` (empty when there is no such version)."""
        if resource is None or not criteria:
            return {}
        out: dict[_Key, bool] = {}
        with self.matcher.holding(resource) as matches:
            for params in criteria:
                key = _key(params)
                if key not in out:
                    out[key] = matches(params)
        return out

    def _previous(self, change: Outcome) -> JSON | None:
        if change.version <= 1:
            return None
        try:
            return self.store.vread(change.rtype, change.id, str(change.version - 1)).resource
        except StoreError:
            return None

    def delivered(self, spec: SubscriptionSpec, kind: str, events: list[Event], error: str = "") -> None:
        """Called by a channel after each notification carrying ``events``: accepted when ``error``
        is empty, else why it failed (a safe text: ``HTTP 503``, ``endpoint refused: …``)."""
        focus = tuple(f"{e.rtype}/{e.rid}/_history/{e.version}" for e in events)
        audit, hook = self.config.audit, self.config.on_delivered
        try:
            if audit is not None:
                audit.disclose(notification_disclosure(
                    subscription=spec.id, owner=spec.owner, kind=kind, content=spec.channel.content, focus=focus,
                    numbers=tuple(e.number for e in events), patients=self._patients(events), error=error))
        except Exception as exc:  # noqa: BLE001 - auditing trouble is logged, delivery goes on
            log.error("subscription %s: audit of a notification failed (%s)", spec.id, type(exc).__name__)
        try:
            if hook is not None and not error:
                hook(Delivered(spec.id, spec.owner, kind, focus, spec.channel.content))
        except Exception as exc:  # noqa: BLE001 - a hook's trouble is logged, delivery is done
            log.error("subscription %s: on_delivered hook failed (%s)", spec.id, type(exc).__name__)

    def _patients(self, events: list[Event]) -> tuple[str, ...]:
        """The Patients the events are about (a deletion: from the version before it)."""
        out: dict[str, None] = {}
        for event in events:
            resource = self.read_version(event)
            if resource is None and event.version > 1:
                resource = self.read_version(replace(event, version=event.version - 1))
            for pid in sorted(clients_of(resource) if resource is not None else ()):
                out[f"Patient/{pid}"] = None
        return tuple(out)

    def read_version(self, event: Event) -> JSON | None:
        """The resource as it was at the event (None for a deletion or when no longer readable)."""
        try:
            return self.store.vread(event.rtype, event.rid, str(event.version)).resource
        except StoreError:
            return None

    # -- $status and $events ---------------------------------------------------------------------
    def _info(self, sub_id: str) -> tuple[StatusInfo, SubscriptionSpec | None]:
        resource = self.store.read("Subscription", sub_id).resource or {}  # 404 / 410 as OperationOutcome
        with self._lock:
            spec = self._specs.get(sub_id)
        counters = self.state.counters(sub_id)
        error = resource.get("error") if resource.get("status") == "error" else ""
        topic = spec.topic.url if spec is not None and not spec.topic.adhoc else None
        return StatusInfo(sub_id, topic, str(resource.get("status", "")), counters.last_number if counters else 0,
                          str(error or "")), spec

    def owned_by(self, sub_id: str, organization: str) -> bool:
        """Whether ``organization`` owns the subscription (its ``subscription-owner``)."""
        _info, spec = self._info(sub_id)
        return spec is not None and spec.owner == organization

    def status(self, sub_id: str, base: str | None = None) -> JSON:
        """``$status``: a searchset Bundle with the subscription's SubscriptionStatus."""
        info, _spec = self._info(sub_id)
        return status_bundle(base or self.base_url, info)

    def events(self, sub_id: str, since: int | None, until: int | None, content: str | None,
               base: str | None = None) -> JSON:
        """``$events``: a history Bundle (type query-event) of the kept events in the range."""
        info, spec = self._info(sub_id)
        if content is not None and content not in CONTENTS:
            raise StoreError("content must be empty, id-only or full-resource", status=400, issue_code="invalid")
        mode = content or (spec.channel.content if spec is not None else "id-only")
        last = info.events_since
        events = self.state.events(sub_id, since if since is not None else 1, until if until is not None else last,
                                   self.config.max_events_per_query)
        return notification_bundle(base or self.base_url, info, "query-event", events, mode, self.read_version)


_Key = tuple[tuple[str, str], ...]


def _key(params: Params) -> _Key:
    return tuple(params)


def _with_status(spec: SubscriptionSpec, status: str) -> SubscriptionSpec:
    return replace(spec, status=status)

"""The intake: what every connector calls for every message (the Receiver of connectors/base.py).

    raw bytes ─ parse (our tokenizer; charset per MSH-18 or sender profile) ──✗── AR/AE + dead letter
              ─ supported type/trigger? ─────────────────────────────────────✗── AR + dead letter
              ─ sender may send it (gateway.security: MSH-4, kind, authorities of PID-3/MRG-1/PV1-19;
                anonymous MLLP with PIVOT_AUTH on) ───────────────────────────✗── AR + dead letter
              ─ required segments/fields (mappings/structure.py)? ──────────✗── AE (enhanced: CE) + dead letter
              ─ duplicate (sender + MSH-10 already accepted)? ──────────────✓── ACK again, nothing changes
              ─ original mode:  map + validate ──✗── AE + dead letter
                                append raw to hl7v2.in (durable) ── AA (+ ERR severity W and a
                                "warning" review entry per value the mapping dropped)
              ─ enhanced mode:  append raw to hl7v2.in (durable) ── commit ACK CA (per MSH-15)
                                map + validate ── application ACK AA/AE (per MSH-16)
                                MSH-16 NE over MLLP/HTTP: no application ACK to wait for, so the CA
                                goes once stored and the mapping worker maps it (_commit_only)

Messages received in batches (``receive_many``: files, ``pivot ingest``, a history backfill) are
appended to ``hl7v2.bulk`` instead: the same records, another lane, which the bulk mapping worker
takes only between the live lane's batches (gateway/eventlog/worker.py ``Turn``).

Parse, supported?, required structure, map + validate and identity are the steps of the pipeline
spine (gateway/pipeline.py), called here with the intake's own checks between them. The mapping
done here decides the ACK; the mapping worker consuming ``hl7v2.in`` produces what is published
(it reuses this result through a small cache when both run in one process). A failure to store
gives AR "system down" and nothing is acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from connectors.base import Origin, Reply
from gateway.envelope import deadletter_headers, inbound_headers, now_iso
from gateway.errors import GatewayError, IncompleteFrameError, MapError, MapWarning, PublishError
from gateway.eventlog.base import EventLog, OutRecord
from gateway.eventlog.state.dedupe import DedupeIndex
from gateway.hl7v2.ack import ack_modes, build_ack, recover_control_id, wants_ack
from gateway.hl7v2.tokenizer import Message
from gateway.identity import IdentityResolver
from gateway.metrics import Metrics
from gateway.pipeline import Ahead, Pipeline, received
from gateway.pipeline import msh_head as _msh_only
from gateway.settings import Settings
from gateway.topics import HL7V2_BULK, HL7V2_IN
from mappings import IdentifierSystems, MapResult, Profiles
from mappings.messages import SUPPORTED
from mappings.pharmacy import PHARMACY_TRIGGERS

log = logging.getLogger("pivot.intake")
_CACHE_SIZE = 2048
_MAX_SENDER_LABELS = 200
_TRIGGER_LABELS = frozenset(t for table in (SUPPORTED, PHARMACY_TRIGGERS) for trigs in table.values() for t in trigs)
UNLISTED = "unlisted"
_LIVE = frozenset({"mllp", "http"})
"""Transports whose sender waits on the line for the ACK (Intake._commit_only); a file, a Kafka topic or a
dead-letter replay gets the mapping's outcome in its reply."""


class SenderLabels:
    """The ``sender`` label of the metrics: a sender's own id once one of its messages was accepted
    (at most 200 of them), else ``unlisted``. MSH-3/MSH-4 of refused input are whatever anyone
    typed: as labels they would grow the metrics without bound (the fuzz storm made 40,000 series).
    The dead letters keep the real sender; the console's feed health reads those, not the metrics."""

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def accepted(self, sender: str) -> str:
        with self._lock:
            if sender in self._known or len(self._known) < _MAX_SENDER_LABELS:
                self._known.add(sender)
                return sender
        return UNLISTED

    def label(self, sender: str) -> str:
        return sender if sender in self._known else UNLISTED


class MapCache:
    """Mapping results of recently accepted messages, keyed by sender + MSH-10 (one process)."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, MapResult] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, result: MapResult) -> None:
        with self._lock:
            self._items[key] = result
            if len(self._items) > _CACHE_SIZE:
                self._items.popitem(last=False)

    def pop(self, key: str) -> MapResult | None:
        with self._lock:
            return self._items.pop(key, None)

    def take(self, key: str) -> tuple[MapResult | None, list[str] | None]:
        """``pop`` with each resource's compact JSON as the handoff carried it (the mapping worker
        publishes those texts instead of serialising again); in memory there are none: None."""
        return self.pop(key), None

    def put_many(self, items: Sequence[tuple[str, MapResult]]) -> None:
        """``put`` of each (key, result), in order (the handoff file: one transaction)."""
        for key, result in items:
            self.put(key, result)

    def take_many(self, keys: Sequence[str]) -> dict[str, tuple[MapResult, list[str] | None]]:
        """``take`` of each key, the results found only (the handoff file: one transaction for a
        mapping worker's batch instead of one per message)."""
        out = {}
        for key in keys:
            result, texts = self.take(key)
            if result is not None:
                out[key] = (result, texts)
        return out

    def close(self) -> None:
        """Nothing to release in memory (gateway.eventlog.state.handoff.SharedMapCache closes its database)."""


class Intake:
    """Receiver for every connector: parse, check, dedupe, map, store durably, acknowledge."""

    def __init__(self, settings: Settings, log_: EventLog, dedupe: DedupeIndex, profiles: Profiles,
                 systems: IdentifierSystems, metrics: Metrics, cache: MapCache,
                 identity: IdentityResolver | None = None,
                 authorize: Callable[[Origin, Message], None] | None = None) -> None:
        self.settings = settings
        self.log = log_
        self.dedupe = dedupe
        self.profiles = profiles
        self.systems = systems
        self.metrics = metrics
        self.cache = cache
        self.identity = identity or IdentityResolver()
        self.pipeline = Pipeline(profiles, systems, self.identity, on_fallback=self._charset_fallback)
        self.authorize = authorize  # Security.authorize_sender: allow-list, authorities; None = everyone
        self.senders = SenderLabels()
        self.topic_in = settings.topic(HL7V2_IN)
        self.topic_bulk = settings.topic(HL7V2_BULK)  # receive_many's raw messages (a backfill)
        self.topic_dead = settings.topic("deadletter")
        self._batch = threading.local()  # receive_many's pending records on this thread (None: append at once)

    # -- Receiver ----------------------------------------------------------------------------------
    def receive(self, raw: bytes, origin: Origin) -> Reply:
        started = time.perf_counter()
        reply = self._receive(raw, origin)
        self.metrics.observe("pivot_ack_seconds", time.perf_counter() - started,
                             "time from message received to ACK", transport=origin.transport)
        return reply

    def receive_many(self, items: Sequence[tuple[bytes, Origin]],
                     ahead: Sequence[Ahead] | None = None) -> list[Reply]:
        """``receive`` of each message in order (``pivot ingest``'s batches, connectors/files.py), the
        pure steps of each taken from ``ahead`` when given (``Pipeline.ahead`` of each raw message, in a
        worker process: ``pivot ingest --jobs N``; the replies are the same), the batch's records (raw
        messages, dead letters, review entries) appended in ONE ``append_many`` (one fsync) before any
        reply. The accepted messages enter the dedupe index only after that commit (a crash in between
        must not leave a message "seen" but not stored); a resend inside the batch is still a duplicate.
        A failed commit answers AR, transient, for the whole batch."""
        pending: list[OutRecord] = []
        accepted: dict[tuple[str, str], None] = {}  # in order; a dict: O(1) resend check inside the batch
        handed: list[tuple[str, MapResult]] = []  # the batch's results, handed over before its append
        self._batch.records, self._batch.accepted, self._batch.handed = pending, accepted, handed
        try:
            pres = ahead if ahead is not None else [None] * len(items)
            replies = [self._receive(raw, origin, pre) for (raw, origin), pre in zip(items, pres, strict=True)]
        finally:
            self._batch.records = self._batch.accepted = self._batch.handed = None
        self.cache.put_many(handed)  # one transaction of the handoff file, before the records exist
        try:
            self.log.append_many(pending)
        except PublishError as exc:
            for sender, control_id in accepted:
                self.cache.pop(f"{sender}|{control_id}")
            log.error("log unavailable: a batch of %d messages refused", len(items))
            return [Reply(code="AR", acks=[build_ack("AR", msg=None, raw=raw, error=exc)],
                          control_id=reply.control_id, error=exc.describe(), transient=True)
                    for (raw, _origin), reply in zip(items, replies, strict=True)]
        self.dedupe.add_many(list(accepted))  # one transaction for the batch
        return replies

    def _append(self, record: OutRecord) -> None:
        """Durable now, or with the batch being received on this thread (``receive_many``)."""
        pending: list[OutRecord] | None = getattr(self._batch, "records", None)
        if pending is None:
            self.log.append(record)
        else:
            pending.append(record)

    def _hand_over(self, key: str, result: MapResult) -> None:
        """Hand the result to the mapping worker now, or with the batch being received on this thread
        (``receive_many`` hands them all over in one call, before its one append)."""
        handed: list[tuple[str, MapResult]] | None = getattr(self._batch, "handed", None)
        if handed is None:
            self.cache.put(key, result)
        else:
            handed.append((key, result))

    def _seen(self, sender: str, control_id: str) -> bool:
        accepted: dict[tuple[str, str], None] | None = getattr(self._batch, "accepted", None)
        return (accepted is not None and (sender, control_id) in accepted) or self.dedupe.seen(sender, control_id)

    def refuse(self, head: bytes, error: GatewayError, origin: Origin) -> Reply:
        """A frame the connector could not pass on (oversize, incomplete): AR, head kept as a dead letter.

        An incomplete frame (IncompleteFrameError) is answered only when its whole MSH segment came
        (else MSA-2 could be a cut MSH-10, or empty: the sender would take the AR for its next message).
        """
        control_id = recover_control_id(head)
        sender = _sender_of(_msh_only(head))
        self._dead(head, error, stage="receive", sender=sender, control_id=control_id, origin=origin)
        if isinstance(error, IncompleteFrameError) and not (control_id and _whole_msh(head)):
            return Reply(code="AR", acks=[], control_id="", error=error.describe())
        self._count(origin, "AR", sender, "")
        return Reply(code="AR", acks=[build_ack("AR", msg=None, raw=head, error=error)],
                     control_id=control_id, error=error.describe())

    # -- steps -------------------------------------------------------------------------------------
    def _receive(self, raw: bytes, origin: Origin, ahead: Ahead | None = None) -> Reply:
        """One message; ``ahead``: its pure steps already run (``Pipeline.ahead``), the same checks in
        the same order on their outcome."""
        received_at = now_iso() if ahead is None else ahead.received_at
        head = _msh_only(raw)
        sender = _sender_of(head)
        try:
            msg = self.pipeline.decode(raw, head)
        except GatewayError as exc:
            return self._reject(raw, None, exc, origin, sender)
        if self.authorize is not None:
            try:
                self.authorize(origin, msg)
            except GatewayError as exc:  # AR 207 (204: an authority it does not own), dead letter "forbidden"
                return self._reject(raw, msg, exc, origin, msg.sender)
        sender = msg.sender
        control_id = msg.control_id
        if not control_id:
            return self._reject(raw, msg, MapError("MSH-10 message control id is empty",
                                                   hl7_code="101"), origin, sender)
        try:  # before the store: a missing required segment/field is AE (original), CE (enhanced)
            profile = self.pipeline.require(msg) if ahead is None else self.pipeline.required(ahead, msg)
        except GatewayError as exc:
            return self._reject(raw, msg, exc, origin, sender)
        accept_mode, app_mode = ack_modes(msg)
        enhanced = bool(accept_mode or app_mode)
        if self._seen(sender, control_id):
            self._count(origin, "AA", sender, msg.trigger, duplicate=True)
            acks = self._acks(msg, "AA", None, enhanced, accept_mode, app_mode)
            return Reply(code="AA", acks=acks, control_id=control_id, duplicate=True)
        if app_mode == "NE" and ahead is None and origin.transport in _LIVE and not self._batching():
            return self._commit_only(raw, msg, origin, received_at, accept_mode)
        key = f"{sender}|{control_id}"
        # map and resolve before the append, and hand the result to the mapping worker (cache) before
        # the record can reach it: the worker must never resolve the same message a second time
        try:
            outcome = (self.pipeline.resolve(msg, profile, received(received_at)) if ahead is None
                       else self.pipeline.resolve_ahead(ahead, msg))
        except PublishError as exc:  # the shared state (identity index) is down: AR, transient, no dead letter
            return self._down(msg, exc, origin, enhanced, accept_mode, app_mode)
        result, warnings, error = outcome.result, outcome.warnings, outcome.error  # warnings: ACK and review
        if error is not None and not enhanced:
            return self._reject(raw, msg, error, origin, sender)
        if result is not None:
            self._hand_over(key, result)
        try:
            self._store(raw, msg, result, origin, received_at)
        except PublishError as exc:
            self.cache.pop(key)
            return self._down(msg, exc, origin, enhanced, accept_mode, app_mode)
        if enhanced:  # stored: commit ACK; then the application ACK of the mapping's outcome
            commit = [build_ack("CA", msg=msg)] if wants_ack(accept_mode, "CA") else []
            if error is not None:  # the mapping worker dead-letters it from hl7v2.in
                self._count(origin, "AE", sender, msg.trigger)
                app = [build_ack(error.ack_code, msg=msg, error=error)] if wants_ack(app_mode, "AE") else []
                return Reply(code=error.ack_code, acks=commit + app, control_id=control_id,
                             error=error.describe())
            self._count(origin, "AA", sender, msg.trigger)
            self._review(raw, msg, warnings, origin)
            app = [build_ack("AA", msg=msg, warnings=warnings)] if wants_ack(app_mode, "AA") else []
            return Reply(code="AA", acks=commit + app, control_id=control_id)
        self._count(origin, "AA", sender, msg.trigger)
        self._review(raw, msg, warnings, origin)
        return Reply(code="AA", acks=[build_ack("AA", msg=msg, warnings=warnings)], control_id=control_id)

    def _commit_only(self, raw: bytes, msg: Message, origin: Origin, received_at: str, accept_mode: str) -> Reply:
        """Enhanced mode, no application ACK asked (MSH-16 NE), from a sender waiting on the line: the
        commit ACK means "stored" (HL7 v2.5 §2.9.3) and nobody waits for the mapping's outcome, so the
        message is stored unmapped (header ``deferred``) and acknowledged at once; the mapping worker maps
        and resolves it, and writes its dead letter or review entries — what it already did for an
        enhanced-mode message the mapping refused (the sender got CA either way). Parse, sender rights,
        required structure and resends are still checked before the CA (CR/CE/CA again)."""
        try:
            self._store(raw, msg, None, origin, received_at, deferred=True)
        except PublishError as exc:
            return self._down(msg, exc, origin, True, accept_mode, "NE")
        self._count(origin, "AA", msg.sender, msg.trigger)
        acks = [build_ack("CA", msg=msg)] if wants_ack(accept_mode, "CA") else []
        return Reply(code="AA", acks=acks, control_id=msg.control_id)

    def _batching(self) -> bool:
        return getattr(self._batch, "records", None) is not None

    def _review(self, raw: bytes, msg: Message, warnings: list[MapWarning], origin: Origin) -> None:
        """An accepted message whose mapping dropped something (MapResult.warnings): one ``warning``
        entry each in the dead letters (the review list; the raw message and its MSH-10 kept)."""
        for warning in warnings:
            try:
                self._dead(raw, warning, stage="warning", sender=msg.sender, control_id=msg.control_id,
                           origin=origin)
            except PublishError:  # the message itself is stored and acknowledged: only the review entry is lost
                log.warning("review entry not stored sender=%s control_id=%s", msg.sender, msg.control_id)

    def _charset_fallback(self, msg: Message) -> None:
        self.metrics.inc("pivot_charset_fallback_total", help_text="messages decoded as cp1252",
                         sender=self.senders.label(msg.sender))
        log.warning("charset fallback sender=%s control_id=%s", msg.sender, msg.control_id)

    def _store(self, raw: bytes, msg: Message, result: MapResult | None, origin: Origin,
               received_at: str, *, deferred: bool = False) -> None:
        patient = result.patient_id if result is not None else None
        headers = inbound_headers(sender=msg.sender, control_id=msg.control_id,
                                  message_type=f"{msg.message_code}^{msg.trigger}",
                                  transport=origin.transport, received_at=received_at, size=len(raw),
                                  deferred=deferred)
        key = (patient or msg.sender).encode("utf-8")
        accepted: dict[tuple[str, str], None] | None = getattr(self._batch, "accepted", None)
        topic = self.topic_in if accepted is None else self.topic_bulk  # a batch (files) is the bulk lane
        self._append(OutRecord(topic=topic, value=raw, key=key, headers=headers))
        if accepted is None:
            self.dedupe.add(msg.sender, msg.control_id)
        else:  # receive_many adds it once the batch is durable
            accepted[(msg.sender, msg.control_id)] = None

    def _acks(self, msg: Message, code: str, error: GatewayError | None, enhanced: bool,
              accept_mode: str, app_mode: str) -> list[bytes]:
        if not enhanced:
            return [build_ack(code, msg=msg, error=error)]
        out = []
        commit = {"AA": "CA", "AE": "CE", "AR": "CR"}[code]
        if wants_ack(accept_mode, commit):
            out.append(build_ack(commit, msg=msg, error=error))
        if wants_ack(app_mode, code):
            out.append(build_ack(code, msg=msg, error=error))
        return out

    def _reject(self, raw: bytes, msg: Message | None, exc: GatewayError, origin: Origin,
                sender: str) -> Reply:
        control_id = msg.control_id if msg is not None else recover_control_id(raw)
        code = exc.ack_code
        transient = False
        try:
            self._dead(raw, exc, stage=_stage(exc), sender=sender, control_id=control_id, origin=origin)
        except PublishError as down:
            exc, code, transient = down, "AR", True
        self._count(origin, code, sender, msg.trigger if msg is not None else "")
        log.info("refused code=%s error=%s hl7=%s sender=%s control_id=%s size=%d transport=%s",
                 code, exc.code, exc.hl7_code, sender, control_id, len(raw), origin.transport)
        if msg is not None:
            accept_mode, app_mode = ack_modes(msg)
            acks = self._acks(msg, code, exc, bool(accept_mode or app_mode), accept_mode, app_mode)
        else:
            acks = [build_ack(code, msg=None, raw=raw, error=exc)]
        return Reply(code=code, acks=acks, control_id=control_id, error=exc.describe(), transient=transient)

    def _down(self, msg: Message, exc: PublishError, origin: Origin, enhanced: bool,
              accept_mode: str, app_mode: str) -> Reply:
        log.error("log unavailable sender=%s control_id=%s", msg.sender, msg.control_id)
        self._count(origin, "AR", msg.sender, msg.trigger)
        return Reply(code="AR", acks=self._acks(msg, "AR", exc, enhanced, accept_mode, app_mode),
                     control_id=msg.control_id, error=exc.describe(), transient=True)

    def _dead(self, raw: bytes, exc: GatewayError, *, stage: str, sender: str, control_id: str,
              origin: Origin) -> None:
        headers = deadletter_headers(stage=stage, code=exc.code, hl7_code=exc.hl7_code,
                                     reason=exc.describe(), sender=sender, control_id=control_id,
                                     transport=origin.transport, source_ref=origin.peer)
        self._append(OutRecord(topic=self.topic_dead, value=raw, key=sender.encode(), headers=headers))
        self.metrics.inc("pivot_deadletters_total", help_text="messages written to the dead letters",
                         stage=stage, sender=self.senders.label(sender))

    def _count(self, origin: Origin, code: str, sender: str, trigger: str, duplicate: bool = False) -> None:
        label = self.senders.accepted(sender) if code == "AA" else self.senders.label(sender)
        self.metrics.inc("pivot_messages_total", help_text="HL7v2 messages by outcome",
                         transport=origin.transport, code=code, sender=label,
                         trigger=trigger if label != UNLISTED and trigger in _TRIGGER_LABELS else "other",
                         duplicate="true" if duplicate else "false")
        self.metrics.gauge_now("pivot_last_message_timestamp_seconds", sender=label)


def _stage(exc: GatewayError) -> str:
    return type(exc).__name__.removesuffix("Error").lower() or "gateway"


def _whole_msh(raw: bytes) -> bool:
    """The bytes hold a whole MSH segment (a segment terminator after it)."""
    head = raw[:8192].lstrip(b"\xef\xbb\xbf\r\n\t ")
    return head.startswith(b"MSH") and (b"\r" in head or b"\n" in head)


def _sender_of(head: Message | None) -> str:
    return head.sender if head is not None else "unknown"


def utc_now() -> datetime:
    return datetime.now(UTC)

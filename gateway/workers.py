"""Background workers: mapping (hl7v2.in → fhir.*) and the embedded store sink (fhir.* → /fhir).

Each worker is a thread looping poll → process → commit (the base class: gateway/eventlog/worker.py,
re-exported here). A record is committed only after what it produced is durable (appended to the
log, or written to the store); a failure to publish is retried with backoff, a failure of the
message itself goes to the dead letters with its reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Protocol

from gateway.delivery.bundle import BUNDLE_TOPIC, bundle_id, message_bundle_json
from gateway.envelope import deadletter_headers, dumps, envelope_head, envelope_resource, envelope_text, now_iso
from gateway.errors import GatewayError, MapWarning, PublishError, StoreError
from gateway.eventlog.base import EventLog, OutRecord, Record
from gateway.eventlog.worker import BULK_BATCH, WORKER_NICE, Turn, Worker, yield_to_intake
from gateway.fhirstore import FhirStore
from gateway.intake import MapCache
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, received
from gateway.settings import Settings
from gateway.topics import DEADLETTER, FHIR_TYPES, HL7V2_BULK, HL7V2_IN, fhir_topic
from mappings import MapResult

__all__ = ["WORKER_NICE", "BulkMappingWorker", "MappingWorker", "RuleHook", "StoreSink", "Worker", "yield_to_intake"]
log = logging.getLogger("pivot.workers")


class RuleHook(Protocol):
    """What runs after each mapped message (DefiSanteRules, PharmacyRules): records to publish with it."""

    def on_mapped(self, result: MapResult, received_at: str) -> list[OutRecord]: ...

    def close(self) -> None: ...


class MappingWorker(Worker):
    """hl7v2.in → map → fhir.<Type> envelopes (key = resource id); failures → deadletter.

    The intake's result is taken from ``cache`` (the handoff); on a miss the message goes through
    the pipeline spine (``pipeline``, gateway/pipeline.py). ``hooks``: the rules run on each mapped
    message, in order, as the composition root gives them (gateway/app.py: Défi Santé, pharmacy);
    none unless given."""

    group = "mapper"
    lane = HL7V2_IN
    append_records = 256
    """Records per append (~20 messages, ~500 KB): each write transaction short (see handle)."""

    def __init__(self, settings: Settings, log_: EventLog, metrics: Metrics, pipeline: Pipeline,
                 cache: MapCache, hooks: Sequence[RuleHook], turn: Turn | None = None) -> None:
        super().__init__(settings, log_, metrics, [settings.topic(self.lane)], turn)
        self.pipeline = pipeline
        self.cache = cache
        self.hooks: list[RuleHook] = list(hooks)
        self._topics: dict[str, str] = {}
        # this batch's results (with their review entries), until published
        self._taken: dict[str, tuple[MapResult, list[str] | None, list[MapWarning]]] = {}
        self._batch: list[Record] | None = None

    def handle(self, records: list[Record]) -> None:
        """Map a batch; its records are appended every :attr:`append_records` (not once at the end:
        a batch of 500 messages is ~6,500 records, ~12 MB, ~0.5 s holding the event log's write lock
        while the intake's appends, the ACKs, wait). The batch is committed after the last append; a
        failed append raises PublishError and Worker._retry hands the same batch again, which reuses
        the results it took (``_taken``: the handoff's are gone, none is resolved a second time) and
        appends the earlier parts again (the sinks are idempotent: nothing changes). The appends do
        not wait for the disk (``sync=False``): what they hold is derived from ``hl7v2.in``, durable
        already, and a power cut that lost them loses this worker's later offset commits too, so the
        messages are mapped again — while a flushed append held the lock the ACKs wait for ~50 ms."""
        if records is not self._batch:  # not Worker._retry giving the same batch again
            self._taken, self._batch = {}, records
        # the intake's results, taken in one transaction for the batch (a deferred record has none)
        wanted = [key for rec in records if (key := _key(rec)) not in self._taken and not _deferred(rec)]
        for key, (result, texts) in self.cache.take_many(wanted).items():
            self._taken[key] = (result, texts, [])
        out: list[OutRecord] = []
        for rec in records:
            out.extend(self._one(rec))
            if len(out) >= self.append_records:
                self.log.append_many(out, sync=False)
                out = []
        self.log.append_many(out, sync=False)
        self._taken, self._batch = {}, None  # published: no retry of this batch

    def _one(self, rec: Record) -> list[OutRecord]:
        """One record: the intake's result taken for the batch (``handle``), else mapped and resolved
        here (a deferred record, stored unmapped by Intake._commit_only; or no result handed over)."""
        sender = rec.headers.get("sender", "")
        control_id = rec.headers.get("msh10", "")
        received_at = rec.headers.get("received_at", "")
        key = _key(rec)
        try:  # a batch retried after a failed append finds what it took or resolved: never resolved again
            taken = self._taken.get(key)
            if taken is None:
                result, warnings = self._resolve(rec, received_at)
                taken = self._taken[key] = (result, None, warnings)
            result, texts, warnings = taken
        except PublishError:  # the shared state is down: the batch is retried (Worker._retry), nothing dead-lettered
            raise
        except GatewayError as exc:
            return [self._dead(rec, exc, sender, control_id)]
        except Exception as exc:
            log.exception("mapping crashed sender=%s control_id=%s", sender, control_id)
            err = GatewayError(f"internal mapping error ({type(exc).__name__})")
            return [self._dead(rec, err, sender, control_id)]
        site = result.resources[0].get("meta", {}).get("source", "") if result.resources else ""
        self.metrics.inc("pivot_mapped_total", help_text="messages mapped and published", sender=sender)
        for seg in result.unmapped_segments:
            self.metrics.inc("pivot_unmapped_segments_total", help_text="segments not mapped", segment=seg)
        if texts is None or len(texts) != len(result.resources):
            texts = [dumps(res) for res in result.resources]
        out = self._records(result, texts, site, sender, control_id, received_at)
        if _deferred(rec):  # the intake wrote no review entry for it
            out.extend(self._dead(rec, warning, sender, control_id, stage="warning") for warning in warnings)
        for hook in self.hooks:
            out.extend(hook.on_mapped(result, received_at))
        return out

    def _records(self, result: MapResult, texts: list[str], site: str, sender: str, control_id: str,
                 received_at: str) -> list[OutRecord]:
        """One ``fhir.<Type>`` envelope per resource, then the whole message as one transaction Bundle
        keyed by patient (what the delivery sink sends): each resource's text (``texts``, its
        ``dumps``) serialised once for both, or not at all when the handoff carried it."""
        head = envelope_head(site=site, control_id=control_id, sender=sender, received_at=received_at,
                             produced_at=now_iso())
        headers = {"msh10": control_id, "sender": sender}  # one dict for the message's records (read only)
        topic = self._topic
        out = [OutRecord(topic=topic(res["resourceType"]), key=str(res["id"]).encode(),
                         value=envelope_text(head, text, result.resolved), headers=headers)
               for res, text in zip(result.resources, texts, strict=True)]
        bundle = message_bundle_json(result.resources, texts, sender=sender, control_id=control_id)
        out.append(OutRecord(topic=self.settings.topic(BUNDLE_TOPIC),
                             key=(result.patient_id or bundle_id(sender, control_id)).encode(),
                             value=envelope_text(head, bundle, result.resolved), headers=headers))
        return out

    def _topic(self, resource_type: str) -> str:
        """The full ``fhir.<Type>`` topic name (computed once per type)."""
        name = self._topics.get(resource_type)
        if name is None:
            name = self._topics[resource_type] = self.settings.topic(fhir_topic(resource_type))
        return name

    def _resolve(self, rec: Record, received_at: str) -> tuple[MapResult, list[MapWarning]]:
        outcome = self.pipeline.run(rec.value, received(received_at))
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None  # no error: a result
        return outcome.result, outcome.warnings

    def _dead(self, rec: Record, exc: GatewayError, sender: str, control_id: str, *, stage: str = "map") -> OutRecord:
        """A dead letter of ``rec`` (stage ``map``), or a review entry (stage ``warning``: a value the
        mapping dropped from a message it accepted; the raw message kept, as the intake writes them)."""
        self.metrics.inc("pivot_deadletters_total", help_text="messages written to the dead letters",
                         stage=stage, sender=sender)
        log.warning("dead letter stage=%s error=%s sender=%s control_id=%s", stage, exc.code, sender, control_id)
        headers = deadletter_headers(stage=stage, code=exc.code, hl7_code=exc.hl7_code,
                                     reason=exc.describe(), sender=sender, control_id=control_id,
                                     transport=rec.headers.get("transport", ""), source_ref=rec.ref)
        return OutRecord(topic=self.settings.topic(DEADLETTER), value=rec.value, key=sender.encode(),
                         headers=headers)


class BulkMappingWorker(MappingWorker):
    """The mapping worker of ``hl7v2.bulk``: what came in files (``pivot ingest``, the file connector:
    a history backfill), in batches of :data:`BULK_BATCH`, each started only when the live mapping
    worker, which shares its :class:`Turn` (and pipeline, handoff and hooks), has no batch waiting.
    Its own consumer group, shared by every instance like the live one's."""

    group = "mapper-bulk"
    lane = HL7V2_BULK
    batch_records = BULK_BATCH
    bulk = True


def _key(rec: Record) -> str:
    """The handoff key of an ``hl7v2.in`` record: sender + MSH-10, as the intake handed it over."""
    return f"{rec.headers.get('sender', '')}|{rec.headers.get('msh10', '')}"


def _deferred(rec: Record) -> bool:
    """Stored unmapped (Intake._commit_only, header ``deferred``): nothing was handed over for it."""
    return rec.headers.get("deferred") == "1"


class StoreSink(Worker):
    """fhir.<Type> envelopes → the embedded FHIR store (idempotent upserts).

    Each instance's embedded store is its own (a file under its data dir), so unlike the mapping
    worker this consumer is NOT shared: its group carries the instance id and every instance reads
    every ``fhir.*`` record. With Kafka, each instance's ``/fhir`` therefore shows the whole network.
    """

    group = "store"

    def __init__(self, settings: Settings, log_: EventLog, metrics: Metrics, store: FhirStore,
                 instance_id: str = "") -> None:
        super().__init__(settings, log_, metrics, [settings.topic(fhir_topic(t)) for t in FHIR_TYPES])
        self.store = store
        self.instance_id = instance_id

    def consumer_group(self) -> str:
        base = super().consumer_group()
        return f"{base}-{self.instance_id}" if self.instance_id else base

    def handle(self, records: list[Record]) -> None:
        items: list[tuple[Record, str, int]] = []  # record, its resource's JSON text, its resolution's rank
        for rec in records:
            try:
                items.append((rec, *_resource_of(rec.value)))
            except (ValueError, KeyError, TypeError, AttributeError):
                self._dead(rec, StoreError("unreadable fhir envelope"))
        if not items:
            return
        try:  # a copy older than the stored one (another partition's message mapped later) changes nothing
            results = self.store.upsert_texts([text for _rec, text, _rank in items], [rank for *_, rank in items])
        except StoreError:  # one bad resource: write the others one by one, dead-letter the bad one
            results = []
            for rec, text, rank in items:
                try:
                    results.extend(self._write_one(rec, text, rank))
                except StoreError as exc:
                    self._dead(rec, exc)
        changed = sum(results)
        self.metrics.inc("pivot_store_writes_total", changed, help_text="resources written",
                         changed="true")
        self.metrics.inc("pivot_store_writes_total", len(results) - changed, changed="false")

    def _write_one(self, rec: Record, text: str, rank: int) -> list[bool]:
        """One record's resource; refused as sliced out of its envelope, the envelope parsed whole (a
        producer that put a key after the resource: ``envelope_resource`` cannot tell)."""
        try:
            return self.store.upsert_texts([text], [rank])
        except StoreError:
            try:
                parsed = _parsed_resource(rec.value)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise StoreError("unreadable fhir envelope") from None
            if parsed[0] == text:
                raise
            return self.store.upsert_texts([parsed[0]], [parsed[1]])

    def _dead(self, rec: Record, exc: GatewayError) -> None:
        log.error("store sink: refused record %s error=%s", rec.ref, exc.code)
        headers = deadletter_headers(stage="store", code=exc.code, hl7_code=exc.hl7_code, reason=exc.describe(),
                                     sender=rec.headers.get("sender", ""), control_id=rec.headers.get("msh10", ""),
                                     transport="eventlog", source_ref=rec.ref)
        self.log.append(OutRecord(topic=self.settings.topic(DEADLETTER), value=rec.value, key=rec.key,
                                  headers=headers))


def _resource_of(envelope_value: bytes) -> tuple[str, int]:
    """A ``fhir.*`` envelope's resource JSON text and rank: sliced out of the mapping worker's layout
    (``envelope_resource``: the resource is not parsed here), parsed for any other (UTF-8 always)."""
    got = envelope_resource(envelope_value)
    return got if got is not None else _parsed_resource(envelope_value)


def _parsed_resource(envelope_value: bytes) -> tuple[str, int]:
    """:func:`_resource_of` by parsing the whole envelope."""
    envelope = json.loads(envelope_value.decode())
    resource = envelope["resource"]
    if not isinstance(resource, dict):
        raise TypeError("resource is not an object")
    return dumps(resource), int(envelope.get("resolved") or 0)

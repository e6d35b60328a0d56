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
from typing import Any, Protocol

from gateway.delivery.bundle import BUNDLE_TOPIC, bundle_id, message_bundle_json
from gateway.envelope import deadletter_headers, dumps, envelope_head, envelope_text, now_iso
from gateway.errors import GatewayError, PublishError, StoreError
from gateway.eventlog.base import EventLog, OutRecord, Record
from gateway.eventlog.worker import WORKER_NICE, Worker, yield_to_intake
from gateway.fhirstore import FhirStore
from gateway.intake import MapCache
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline, received
from gateway.settings import Settings
from gateway.topics import DEADLETTER, FHIR_TYPES, HL7V2_IN, fhir_topic
from mappings import MapResult

__all__ = ["WORKER_NICE", "MappingWorker", "RuleHook", "StoreSink", "Worker", "yield_to_intake"]
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

    def __init__(self, settings: Settings, log_: EventLog, metrics: Metrics, pipeline: Pipeline,
                 cache: MapCache, hooks: Sequence[RuleHook]) -> None:
        super().__init__(settings, log_, metrics, [settings.topic(HL7V2_IN)])
        self.pipeline = pipeline
        self.cache = cache
        self.hooks: list[RuleHook] = list(hooks)

    def handle(self, records: list[Record]) -> None:
        out: list[OutRecord] = []
        for rec in records:
            out.extend(self._one(rec))
        self.log.append_many(out)

    def _one(self, rec: Record) -> list[OutRecord]:
        sender = rec.headers.get("sender", "")
        control_id = rec.headers.get("msh10", "")
        received_at = rec.headers.get("received_at", "")
        try:
            result = self.cache.pop(f"{sender}|{control_id}") or self._resolve(rec, received_at)
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
        out = self._records(result, site, sender, control_id, received_at)
        for hook in self.hooks:
            out.extend(hook.on_mapped(result, received_at))
        return out

    def _records(self, result: MapResult, site: str, sender: str, control_id: str,
                 received_at: str) -> list[OutRecord]:
        """One ``fhir.<Type>`` envelope per resource, then the whole message as one transaction Bundle
        keyed by patient (what the delivery sink sends): each resource serialised once for both."""
        texts = [dumps(res) for res in result.resources]
        head = envelope_head(site=site, control_id=control_id, sender=sender, received_at=received_at,
                             produced_at=now_iso())
        out = [OutRecord(topic=self.settings.topic(fhir_topic(res["resourceType"])), key=str(res["id"]).encode(),
                         value=envelope_text(head, text, result.resolved),
                         headers={"msh10": control_id, "sender": sender})
               for res, text in zip(result.resources, texts, strict=True)]
        bundle = message_bundle_json(result.resources, texts, sender=sender, control_id=control_id)
        out.append(OutRecord(topic=self.settings.topic(BUNDLE_TOPIC),
                             key=(result.patient_id or bundle_id(sender, control_id)).encode(),
                             value=envelope_text(head, bundle), headers={"msh10": control_id, "sender": sender}))
        return out

    def _resolve(self, rec: Record, received_at: str) -> MapResult:
        outcome = self.pipeline.run(rec.value, received(received_at))
        if outcome.error is not None:
            raise outcome.error
        assert outcome.result is not None  # no error: a result
        return outcome.result

    def _dead(self, rec: Record, exc: GatewayError, sender: str, control_id: str) -> OutRecord:
        self.metrics.inc("pivot_deadletters_total", help_text="messages written to the dead letters",
                         stage="map", sender=sender)
        log.warning("dead letter stage=map error=%s sender=%s control_id=%s", exc.code, sender, control_id)
        headers = deadletter_headers(stage="map", code=exc.code, hl7_code=exc.hl7_code,
                                     reason=exc.describe(), sender=sender, control_id=control_id,
                                     transport=rec.headers.get("transport", ""), source_ref=rec.ref)
        return OutRecord(topic=self.settings.topic(DEADLETTER), value=rec.value, key=sender.encode(),
                         headers=headers)


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
        items: list[tuple[Record, dict[str, Any], int]] = []  # record, resource, its resolution's rank
        for rec in records:
            try:
                envelope = json.loads(rec.value.decode())  # our envelopes are UTF-8: no detection
                items.append((rec, envelope["resource"], int(envelope.get("resolved") or 0)))
            except (ValueError, KeyError, TypeError, AttributeError):
                self._dead(rec, StoreError("unreadable fhir envelope"))
        if not items:
            return
        try:  # a copy older than the stored one (another partition's message mapped later) changes nothing
            results = self.store.upsert_many([res for _rec, res, _rank in items], [rank for *_, rank in items])
        except StoreError:  # one bad resource: write the others one by one, dead-letter the bad one
            results = []
            for rec, res, rank in items:
                try:
                    results.extend(self.store.upsert_many([res], [rank]))
                except StoreError as exc:
                    self._dead(rec, exc)
        changed = sum(1 for _res, was_changed in results if was_changed)
        self.metrics.inc("pivot_store_writes_total", changed, help_text="resources written",
                         changed="true")
        self.metrics.inc("pivot_store_writes_total", len(results) - changed, changed="false")

    def _dead(self, rec: Record, exc: GatewayError) -> None:
        log.error("store sink: refused record %s error=%s", rec.ref, exc.code)
        headers = deadletter_headers(stage="store", code=exc.code, hl7_code=exc.hl7_code, reason=exc.describe(),
                                     sender=rec.headers.get("sender", ""), control_id=rec.headers.get("msh10", ""),
                                     transport="eventlog", source_ref=rec.ref)
        self.log.append(OutRecord(topic=self.settings.topic(DEADLETTER), value=rec.value, key=rec.key,
                                  headers=headers))

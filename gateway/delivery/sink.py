"""fhir.Bundle records → the external FHIR server, one transaction per source message, in order.

The consumer group ``deliver`` is shared by every gateway instance (they split the partitions);
records of one patient share a partition (key = patient id) and are delivered one at a time, in
order, so two writes of the same patient never race. A refused bundle (4xx) becomes a dead letter
(stage ``deliver``) and delivery goes on; anything transient is retried inside the client until it
succeeds or the worker stops, in which case nothing of the polled batch is committed (bundles
already delivered are re-read and skipped after the restart: see delta.py).

A resource of several keys (a shared Practitioner, Encounters re-published after a merge) may be
delivered by several instances in any order: each entry is tagged with its record's resolution
rank (the envelope's ``resolved``) and never written over a server copy of a higher rank (delta.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gateway.delivery.bundle import BUNDLE_TOPIC
from gateway.delivery.client import FhirClient
from gateway.delivery.delta import stamp
from gateway.envelope import deadletter_headers
from gateway.errors import DeliverError, PublishError
from gateway.eventlog.base import EventLog, OutRecord, Record
from gateway.eventlog.worker import Worker
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.topics import DEADLETTER

log = logging.getLogger("pivot.delivery")


class DeliverySink(Worker):
    """Poll fhir.Bundle → ``FhirClient.deliver`` each bundle → commit; 4xx → dead letter."""

    group = "deliver"

    def __init__(self, settings: Settings, log_: EventLog, metrics: Metrics, client: FhirClient) -> None:
        super().__init__(settings, log_, metrics, [settings.topic(BUNDLE_TOPIC)])
        self.client = client
        self.delivered = 0
        self.dead = 0

    def run(self) -> None:
        for problem in self.client.capabilities_problems():
            log.warning("FHIR server %s: %s", self.client.base_url, problem)
        try:
            super().run()
        except PublishError:
            if not self._stop_event.is_set():
                raise
            log.info("deliver: stopped; undelivered bundles stay in the log for the next start")
        finally:
            self.client.close()

    def handle(self, records: list[Record]) -> None:
        for rec in records:
            if self._stop_event.is_set():
                raise PublishError("delivery stopped: batch left uncommitted")
            self._one(rec)

    def _one(self, rec: Record) -> None:
        sender = rec.headers.get("sender", "")
        control_id = rec.headers.get("msh10", "")
        read = _bundle_of(rec.value)
        if read is None:
            self._dead(rec, DeliverError("unreadable fhir.Bundle record (not an envelope of a Bundle)"),
                       sender, control_id, rec.value)
            return
        bundle, rank = read
        stamp(bundle, rank)  # each copy carries its resolution: an older one never overwrites a newer
        started = time.perf_counter()
        try:
            result = self.client.deliver(bundle, stop=self._stop_event)
        except DeliverError as exc:
            self._dead(rec, exc, sender, control_id,
                       json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
            return
        self.delivered += 1
        self.metrics.observe("pivot_deliver_seconds", time.perf_counter() - started,
                             help_text="time to deliver one bundle, retries included")
        self.metrics.inc("pivot_delivered_bundles_total", help_text="bundles delivered to the FHIR server",
                         sender=sender)
        for result_name, count in (("created", result.created), ("updated", result.updated),
                                   ("unchanged", result.unchanged), ("stale", result.stale)):
            if count:
                self.metrics.inc("pivot_delivered_resources_total", count,
                                 help_text="resources delivered, by outcome", result=result_name)
        if result.attempts > 1:
            self.metrics.inc("pivot_deliver_retries_total", result.attempts - 1,
                             help_text="delivery attempts that failed transiently")
        log.debug("delivered control_id=%s created=%d updated=%d unchanged=%d stale=%d attempts=%d", control_id,
                  result.created, result.updated, result.unchanged, result.stale, result.attempts)

    def _dead(self, rec: Record, exc: DeliverError, sender: str, control_id: str, value: bytes) -> None:
        self.dead += 1
        self.metrics.inc("pivot_deadletters_total", help_text="messages written to the dead letters",
                         stage="deliver", sender=sender)
        status = getattr(exc, "status", "")
        log.warning("dead letter stage=deliver error=%s status=%s sender=%s control_id=%s", exc.code, status,
                    sender, control_id)
        headers = deadletter_headers(stage="deliver", code=exc.code, hl7_code="207", reason=exc.describe(),
                                     sender=sender, control_id=control_id, transport="fhir", source_ref=rec.ref)
        self.log.append(OutRecord(topic=self.settings.topic(DEADLETTER), value=value, key=rec.key,
                                  headers=headers))


def _bundle_of(value: bytes) -> tuple[dict[str, Any], int] | None:
    """The transaction Bundle of a record and its resolution rank: an envelope's ``resource`` and
    ``resolved`` (0 when absent), or a bare Bundle (rank 0: its entries keep the tags they carry)."""
    try:
        body = json.loads(value)
    except ValueError:
        return None
    rank = 0
    if isinstance(body, dict) and isinstance(body.get("resource"), dict):
        resolved = body.get("resolved")
        rank = resolved if type(resolved) is int and resolved > 0 else 0
        body = body["resource"]
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or body.get("type") != "transaction":
        return None
    if not all(isinstance(e, dict) and isinstance(e.get("request"), dict) and isinstance(e.get("resource"), dict)
               for e in body.get("entry") or []):
        return None
    return body, rank

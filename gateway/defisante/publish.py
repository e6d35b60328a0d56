"""Writing program resources: into the local store at once, and onto the topics for everyone else.

The embedded store of each instance is fed from the ``fhir.<Type>`` topics; the delivery sink
sends ``fhir.Bundle`` records to the external FHIR server. Resources the program creates itself
(enrollment, alerts) therefore go three ways: upserted into the local store (read-your-writes:
the POST that enrolls answers with what any GET now returns), one ``fhir.<Type>`` record per
resource (key = its id: the other instances' stores), and one ``fhir.Bundle`` transaction keyed
by patient (the external server, in order with that patient's messages).

:func:`write_and_publish` appends to the log *inside* the store's write transaction, before the
commit: a log that refuses the records rolls the local write back (the caller gets a 503 and may
retry; deterministic ids make the retry harmless), and a crash after the append is repaired by the
store sink, which writes the same records.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gateway.defisante.codes import JSON
from gateway.delivery.bundle import BUNDLE_TOPIC, message_bundle
from gateway.envelope import fhir_envelope, now_iso
from gateway.errors import PublishError, StoreError, ValidateError
from gateway.eventlog.base import EventLog, OutRecord
from gateway.fhir.models import canonical_json, validate
from gateway.fhirstore import FhirStore, Outcome
from gateway.settings import Settings
from gateway.topics import ALERTS, fhir_topic

ALERT_SCHEMA_VERSION = 1
SENDER = "PIVOT|DEFI-SANTE"
"""The envelope ``sender`` of resources written by a program operation (not mapped from HL7v2)."""
SITE = "defi-sante"


def operation_id(action: str, resources: list[JSON]) -> str:
    """A deterministic control id for an operation: the same resources give the same id."""
    digest = hashlib.sha256(canonical_json({"r": resources}).encode()).hexdigest()[:24]
    return f"{action}-{digest}"


def records(settings: Settings, resources: list[JSON], *, key: str, sender: str, control_id: str,
            site: str, received_at: str, bundle_of: str = "") -> list[OutRecord]:
    """One ``fhir.<Type>`` record per resource and one ``fhir.Bundle`` record keyed by ``key``.

    ``bundle_of`` tells this Bundle's id apart from the message's own (same sender and MSH-10)."""
    headers = {"msh10": control_id, "sender": sender}
    out = [OutRecord(topic=settings.topic(fhir_topic(str(res["resourceType"]))), key=str(res["id"]).encode(),
                     value=fhir_envelope(res, site=site, control_id=control_id, sender=sender,
                                         received_at=received_at), headers=dict(headers))
           for res in resources]
    bundle = message_bundle(resources, sender=sender, control_id=control_id + bundle_of)
    out.append(OutRecord(topic=settings.topic(BUNDLE_TOPIC), key=key.encode(),
                         value=fhir_envelope(bundle, site=site, control_id=control_id, sender=sender,
                                             received_at=received_at), headers=dict(headers)))
    return out


def write_and_publish(store: FhirStore, log: EventLog, settings: Settings, resources: list[JSON], *,
                      key: str, action: str) -> list[Outcome]:
    """Validate, write locally in one transaction, publish when anything changed (module docstring).

    Raises StoreError 422 for an invalid resource, 503 when the log refuses the records.
    """
    for res in resources:
        try:
            validate(res)
        except ValidateError as exc:  # the message names paths, never values
            raise StoreError(f"the operation built an invalid resource: {exc.message}", status=422,
                             issue_code="processing") from None
    control_id = operation_id(action, resources)
    try:
        with store.writing() as writer:
            outcomes = [writer.put(res) for res in resources]
            if any(o.changed for o in outcomes):
                log.append_many(records(settings, resources, key=key, sender=SENDER, control_id=control_id,
                                        site=SITE, received_at=now_iso()))
    except PublishError:
        raise StoreError("the event log is unavailable: nothing was written, retry later", status=503,
                         issue_code="transient") from None
    return outcomes


def alert_record(settings: Settings, comm: JSON, kind: str, reason: list[JSON], *, key: str, sender: str,
                 control_id: str, site: str, received_at: str, encounter: str = "", arrival: str = "",
                 departure: str = "") -> OutRecord:
    """The ``defisante.alerts`` record of one Communication (schemas/defisante/alert-event.schema.json):
    ER alerts name their encounter and its times, pharmacy alerts leave them empty."""
    body: dict[str, Any] = {
        "schema_version": ALERT_SCHEMA_VERSION,
        "event_id": comm["id"],
        "kind": kind,
        "priority": comm["priority"],
        "patient": comm["subject"]["reference"],
        "encounter": encounter,
        "flag": comm["about"][0]["reference"],
        "communication": f"Communication/{comm['id']}",
        "recipients": comm["recipient"],
        "site": site,
        "arrival": arrival,
        "departure": departure,
        "reason": reason,
        "sender": sender,
        "msh10": control_id,
        "received_at": received_at,
        "produced_at": now_iso(),
    }
    return OutRecord(topic=settings.topic(ALERTS), key=key.encode(),
                     value=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                     headers={"schema_version": str(ALERT_SCHEMA_VERSION), "kind": kind, "msh10": control_id,
                              "sender": sender})

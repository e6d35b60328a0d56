"""ER alerts of enrolled clients: ``DefiSanteRules.on_mapped`` runs after every mapped message.

    trigger (alerts.json)   condition                                            Communication kind
    A04/A01/A08 → arrival   Encounter class EMER, still open, client enrolled    er-arrival (case manager +
                            (active Flag) now, arrival not older than             family doctor) and
                            max_age_hours (a backfill raises nothing)             er-arrival-family (the
                                                                                  RelatedPersons the Consent
                                                                                  permits; no reason)
    A11 → cancelled         an er-arrival was sent for this Encounter            er-cancelled (same people)
    A03 → discharge         client enrolled, departure recent                    er-discharge (case manager)

The client is found from the message's Patient, its Patient.link (merges) and, when the message
carries no NAM (an ER that registers with the site MRN only), the Patients sharing one of its
identifiers, by reading the Flag of each by its deterministic id in the shared register (else the
local store: a message of a person who is not enrolled costs a few indexed reads).

Each Communication has a deterministic id per (Encounter, kind), claimed in the **alert ledger**
of the shared state (gateway/eventlog/state/ledger.py: one row per Communication, the message
that raised it, its body) by one ``INSERT … ON CONFLICT DO NOTHING``: one claimed by another
message (a resent A04 with a new MSH-10, the A03 of the same visit, the A08 that adds the NAM),
on whichever instance, means "already told": nothing is raised. One claimed by the *same*
message (a worker crashed before committing and the record is read again, here or on the
instance its partition moved to) is published again, identical, so an alert is never lost. The
enrollment is read from the shared register (roster.py), so an enrollment made through any
instance counts as soon as its operation returned.

The Communications are written to the local store at once (readable at /fhir before the batch
is committed) and returned to the mapping worker, which publishes them with the message's
records: ``fhir.Communication``, one ``fhir.Bundle`` (delivery) and one event per Communication
on ``defisante.alerts`` (schema in schemas/defisante/). With an ``audit`` trail, each
Communication raised is also an AuditEvent (``alert``: the gateway tells its recipients about the
Patient; references only, see gateway/security/audit_disclosure.py).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from gateway.defisante import codes
from gateway.defisante.codes import ARRIVAL, CANCELLED, FAMILY, JSON, ref_id
from gateway.defisante.config import ProgramConfig, load_config
from gateway.defisante.publish import alert_record, records
from gateway.defisante.register import site_of
from gateway.defisante.roster import Enrollment, active_enrollment, read
from gateway.errors import PublishError, StoreError
from gateway.eventlog.base import OutRecord
from gateway.eventlog.state.db import SqliteDb, StateUnavailable
from gateway.eventlog.state.ledger import AlertLedger
from gateway.eventlog.state.migrate import migrate
from gateway.eventlog.state.register import ProgramRegister
from gateway.fhir.models import validate
from gateway.fhirstore import FhirStore
from gateway.fhirstore.dates import start_ms as _ms
from gateway.fhirstore.queries import BackendError, ids_with_identifier
from gateway.metrics import Metrics
from gateway.security.audit_disclosure import alert_disclosure
from gateway.settings import Settings
from mappings import MapResult

if TYPE_CHECKING:
    from gateway.security.audit_trail import AuditTrail

log = logging.getLogger("pivot.defisante")
_OPEN = frozenset({"arrived", "triaged", "in-progress", "onleave", "unknown"})


def _shown(text: str) -> str:
    """A FHIR dateTime as the case manager reads it: ``2026-03-04 14:05`` (the site's local time)."""
    return text[:16].replace("T", " ") if text else ""


def _reason(enc: JSON, resources: list[JSON]) -> tuple[str, list[JSON]]:
    """Human text and codings of the visit's reason (PV2-3), else of its diagnoses (DG1)."""
    concepts = list(enc.get("reasonCode") or [])
    if not concepts:
        concepts = [r.get("code") for r in resources if r.get("resourceType") == "Condition" and r.get("code")]
    codings = [c for concept in concepts for c in (concept or {}).get("coding") or [] if isinstance(c, dict)]
    texts = [str(c.get("display") or c.get("code")) for c in codings] or \
        [str(c["text"]) for c in concepts if isinstance(c, dict) and c.get("text")]
    return ", ".join(dict.fromkeys(texts)), codings


class DefiSanteRules:
    """The program's rule hook of the mapping worker (see the module docstring).

    Without a store (``DefiSanteRules()``, as a worker built alone gets) it raises nothing; with an
    ``audit`` trail each alert raised is an AuditEvent. ``ledger`` and ``register`` are the shared
    state (gateway.eventlog.state: every instance's rules decide on the same rows); without them,
    an in-memory ledger and the local store (one instance only).
    """

    def __init__(self, store: FhirStore | None = None, settings: Settings | None = None,
                 config: ProgramConfig | None = None, metrics: Metrics | None = None,
                 audit: AuditTrail | None = None, ledger: AlertLedger | None = None,
                 register: ProgramRegister | None = None) -> None:
        self.store = store
        self.settings = settings
        self.config = config or load_config()
        self.metrics = metrics or Metrics()
        self.audit = audit
        self._own_ledger = ledger is None
        self.ledger = ledger if ledger is not None else _memory_ledger()
        self.register = register

    def close(self) -> None:
        if self._own_ledger:
            self.ledger.close()

    def on_mapped(self, result: MapResult, received_at: str) -> list[OutRecord]:
        """Records to publish with the message's own (empty for nearly every message)."""
        if self.store is None or self.settings is None or result.message_code != "ADT":
            return []
        event = self.config.alerts.triggers.get(result.trigger)
        enc = next((r for r in result.resources if r.get("resourceType") == "Encounter"), None)
        if event is None or enc is None:
            return []
        try:
            comms = self._communications(event, enc, result, received_at)
            return self._publish(comms, enc, result, received_at)
        except StateUnavailable:  # the shared state is down: the worker retries the batch
            raise
        except (BackendError, StoreError) as exc:  # store busy or closed: the worker retries the batch
            raise PublishError(f"Défi Santé rules: store unavailable ({type(exc).__name__})") from exc
        except Exception as exc:  # noqa: BLE001 - a rule bug must never stop the feed; ids only in the log
            log.error("defisante rules failed error=%s control_id=%s", type(exc).__name__, result.control_id)
            self.metrics.inc("pivot_defisante_rule_errors_total", help_text="Défi Santé rule failures")
            return []

    # -- who ---------------------------------------------------------------------------------------
    def _patient_ids(self, result: MapResult) -> list[str]:
        """The message's Patient and its merge links; when it came without a NAM (a site MRN only),
        also the Patients sharing one of its identifiers (one indexed query, ids only)."""
        assert self.store is not None
        patient = next((r for r in result.resources if r.get("resourceType") == "Patient"
                        and r.get("id") == result.patient_id), None)
        ids = [result.patient_id] if result.patient_id else []
        if patient is None:
            return ids
        ids += [rid for link in patient.get("link") or [] if (rid := ref_id((link or {}).get("other"), "Patient"))]
        idents = [(str(i["system"]), str(i["value"])) for i in patient.get("identifier") or []
                  if isinstance(i, dict) and i.get("system") and i.get("value")]
        if idents and not any(system == codes.NAM_SYSTEM for system, _v in idents):
            ids += ids_with_identifier(self.store, "Patient", idents, limit=20)
        return list(dict.fromkeys(ids))

    # -- what --------------------------------------------------------------------------------------
    def _communications(self, kind: str, enc: JSON, result: MapResult, received_at: str) -> list[JSON]:
        assert self.store is not None
        policy = self.config.alerts
        received_ms = _ms(received_at) or 0
        max_age_ms = int(policy.max_age_hours * 3_600_000)
        if kind == CANCELLED:
            return self._cancelled(enc, received_at)
        period = enc.get("period") or {}
        if kind == ARRIVAL and ((enc.get("class") or {}).get("code") != codes.EMERGENCY
                                or enc.get("status") not in _OPEN):
            return []
        moment = period.get("start") if kind == ARRIVAL else period.get("end") or received_at
        moment_ms = _ms(moment) or received_ms
        if received_ms - moment_ms > max_age_ms:
            return []  # history (a backfill): nobody is told about last year's visits
        client = active_enrollment(self.store, self._patient_ids(result), self.register)
        if client is None:
            return []
        site = site_of(enc)
        reason, _codings = _reason(enc, result.resources)
        values = {"site": site, "arrival": _shown(str(period.get("start") or "")),
                  "departure": _shown(str(period.get("end") or "")), "reason": reason}
        out = [self._comm(kind, enc, client, self._recipients(client, policy.recipients[kind]), received_at,
                          policy.text(kind, **values))]
        family = client.family_permitted() if kind == ARRIVAL else []
        if family:
            out.append(self._comm(FAMILY, enc, client, family, received_at, policy.text(FAMILY, **values)))
        return [c for c in out if c["recipient"] and self._new(c, enc)]

    def _cancelled(self, enc: JSON, received_at: str) -> list[JSON]:
        assert self.store is not None
        eid = str(enc["id"])
        sent = [c for k in (ARRIVAL, FAMILY) if (c := self._sent(codes.communication_id(eid, k))) is not None]
        if not sent:
            return []
        arrival = sent[0]
        pid = ref_id(arrival.get("subject"), "Patient") or ""
        client = active_enrollment(self.store, [pid], self.register) if pid else None
        if client is None:
            return []
        recipients = list({json.dumps(r, sort_keys=True): r for c in sent for r in c.get("recipient") or []}.values())
        period = enc.get("period") or {}
        text = self.config.alerts.text(CANCELLED, site=site_of(enc), arrival=_shown(str(period.get("start") or "")))
        comm = self._comm(CANCELLED, enc, client, recipients, received_at, text)
        comm["inResponseTo"] = [{"reference": f"Communication/{c['id']}"} for c in sent]
        return [comm] if self._new(comm, enc) else []

    def _recipients(self, client: Enrollment, roles: tuple[str, ...]) -> list[JSON]:
        out: dict[str, JSON] = {}
        for role in roles:
            for member in client.members(role):
                out.setdefault(json.dumps(member, sort_keys=True), member)
        return list(out.values())

    def _comm(self, kind: str, enc: JSON, client: Enrollment, recipients: list[JSON], received_at: str,
              text: str) -> JSON:
        eid = str(enc["id"])
        comm: JSON = {"resourceType": "Communication", "id": codes.communication_id(eid, kind),
                      "meta": {"profile": [codes.ALERT_PROFILE]}}
        source = (enc.get("meta") or {}).get("source")
        if isinstance(source, str):
            comm["meta"]["source"] = source
        if client.careplan is not None:
            comm["basedOn"] = [{"reference": f"CarePlan/{client.careplan['id']}"}]
        comm.update({
            "status": "completed",
            "category": [codes.concept("alert", "Alert", codes.COMM_CATEGORY),
                         codes.concept(kind, codes.KIND_DISPLAY[kind])],
            "priority": self.config.alerts.priority[kind],
            "subject": {"reference": f"Patient/{client.patient_id}"},
            "about": [{"reference": f"Flag/{client.flag['id']}"}],
            "encounter": {"reference": f"Encounter/{eid}"},
            "sent": received_at,
            "recipient": recipients,
            "payload": [{"contentString": text}],
        })
        if kind != FAMILY:  # the family gets the text only
            comm["payload"].append({"contentReference": {"reference": f"Encounter/{eid}"}})
        return comm

    def _sent(self, cid: str) -> JSON | None:
        """A Communication raised: from the ledger (whichever instance raised it), else the store."""
        assert self.store is not None
        return self.ledger.sent(cid) or read(self.store, "Communication", cid)

    def _new(self, comm: JSON, enc: JSON) -> bool:
        """True unless this Communication was already raised by another message: claimed in the
        shared ledger (gateway.eventlog.state.ledger) by the message (its meta.source) in one
        statement. One found in the store but not in the ledger (raised before the ledger existed)
        is noted as raised by its own message first."""
        assert self.store is not None
        cid = str(comm["id"])
        existing = read(self.store, "Communication", cid)
        prior = (str((existing.get("meta") or {}).get("source") or ""), existing) if existing is not None else None
        return self.ledger.claim(cid, str((enc.get("meta") or {}).get("source") or ""), comm, prior=prior)

    # -- out ---------------------------------------------------------------------------------------
    def _publish(self, comms: list[JSON], enc: JSON, result: MapResult, received_at: str) -> list[OutRecord]:
        if not comms:
            return []
        assert self.store is not None
        assert self.settings is not None
        for comm in comms:
            validate(comm)
        self.store.upsert_many(comms)  # read-your-writes, and the ledger for the next message
        pid = ref_id(comms[0]["subject"], "Patient") or ""
        site = site_of(enc)
        out = records(self.settings, comms, key=pid, sender=result.sender, control_id=result.control_id,
                      site=site, received_at=received_at, bundle_of="#defi-sante")
        period = enc.get("period") or {}
        _text, reason = _reason(enc, result.resources)
        for comm in comms:
            kind = next(c["code"] for cat in comm["category"] for c in cat["coding"] if c["system"] == codes.CODESYSTEM)
            out.append(alert_record(self.settings, comm, kind, [] if kind == FAMILY else reason,
                                    key=pid, sender=result.sender, control_id=result.control_id, site=site,
                                    received_at=received_at, encounter=f"Encounter/{enc['id']}",
                                    arrival=str(period.get("start") or ""), departure=str(period.get("end") or "")))
            self.metrics.inc("pivot_defisante_alerts_total", help_text="Défi Santé Communications raised", kind=kind)
            if self.audit is not None:
                self.audit.disclose(alert_disclosure(comm, kind))
            log.info("defisante alert kind=%s communication=%s encounter=%s control_id=%s", kind, comm["id"],
                     enc["id"], result.control_id)
        return out


def _memory_ledger() -> AlertLedger:
    """A ledger of this object only (tests, a worker built alone): the store still tells what an
    earlier run raised (``_new``)."""
    db = SqliteDb(None)
    migrate(db, "ledger")
    return AlertLedger(db)

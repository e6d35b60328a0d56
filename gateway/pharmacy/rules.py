"""``PharmacyRules.on_mapped``: after each mapped pharmacy message, the profile, the care team, alerts.

For a message whose type is a pharmacy one (RDS, RDE, RAS) and that carries a Patient:

1. **Read-your-writes**: the message's MedicationDispenses / MedicationRequests /
   MedicationAdministrations and its Provenance are upserted into the local store at once (the
   store sink writes the same content later: a no-op), so a second message of the same batch sees
   the first.
2. **Profile**: the person's dispenses, orders and profile Provenances are read from the store (the
   Patient and the Patients its ``link`` names), the profile is evaluated at the reception time
   (profile.py) and one MedicationStatement per drug is upserted (statements.py). Statements that
   changed, and those of the message's drugs, are published (``fhir.MedicationStatement`` + one
   ``fhir.Bundle`` keyed by the patient).
3. **Enrolled clients only** (an active Défi Santé Flag, read by id): the dispensing pharmacies and
   pharmacists join the CareTeam (careteam.py), and the alerts of alerts.py become Communications
   (category alert, recipients the CareTeam's case managers) plus one ``defisante.alerts`` event each.
   The store is the ledger: a Communication that exists from another message (a resend) is not
   raised again; one from this very message (a crash before commit) is published again, identical.
   With an ``audit`` trail each alert raised is also an AuditEvent (references only).

Errors: a store that is busy or closed raises PublishError (the worker retries the batch); any other
failure is logged by type with the control id only and never stops the feed (no statement or alert
for that message). Nothing here logs a field value.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gateway.defisante import codes
from gateway.defisante.codes import ref_id
from gateway.defisante.publish import alert_record, records
from gateway.defisante.roster import Enrollment, active_enrollment, read
from gateway.errors import PublishError, StoreError
from gateway.eventlog.base import OutRecord
from gateway.fhir.models import validate
from gateway.fhirstore import FhirStore
from gateway.fhirstore.queries import BackendError
from gateway.metrics import Metrics
from gateway.pharmacy import alerts as rules_alerts
from gateway.pharmacy.careteam import with_pharmacists
from gateway.pharmacy.config import ProfilePolicy, load_policy
from gateway.pharmacy.profile import DrugState, evaluate, facts, ms_of
from gateway.pharmacy.statements import statement
from gateway.security.audit_disclosure import alert_disclosure
from gateway.settings import Settings
from mappings.context import MapResult
from mappings.pharmacy import PHARMACY_TRIGGERS

if TYPE_CHECKING:
    from gateway.security.audit_trail import AuditTrail

log = logging.getLogger("pivot.pharmacy")
JSON = dict[str, Any]
_OWN_TYPES = ("MedicationDispense", "MedicationRequest", "MedicationAdministration", "Provenance")
_READ_TYPES = ("MedicationDispense", "MedicationRequest", "Provenance")
SENDER = "PIVOT|PHARMACY-PROFILE"
"""The envelope ``sender`` of statements re-evaluated by :meth:`PharmacyRules.expire` (no message)."""
SITE = "pharmacy-profile"


def _site(result: MapResult) -> str:
    """The sending facility (MSH-4) of a message, from ``MapResult.sender`` (MSH-3|MSH-4)."""
    return result.sender.split("|")[-1]


class PharmacyRules:
    """The pharmacy rule hook of the mapping worker (module docstring); same shape as DefiSanteRules.

    Without a store (``PharmacyRules()``) it does nothing; with an ``audit`` trail each alert raised
    is an AuditEvent.
    """

    def __init__(self, store: FhirStore | None = None, settings: Settings | None = None,
                 policy: ProfilePolicy | None = None, metrics: Metrics | None = None,
                 audit: AuditTrail | None = None) -> None:
        self.store = store
        self.settings = settings
        self.policy = policy or load_policy()
        self.metrics = metrics or Metrics()
        self.audit = audit

    def close(self) -> None:
        return None

    # -- entry points ------------------------------------------------------------------------------
    def on_mapped(self, result: MapResult, received_at: str) -> list[OutRecord]:
        """Records to publish with the message's own (module docstring)."""
        if self.store is None or self.settings is None or not result.patient_id or \
                result.message_code.strip().upper() not in PHARMACY_TRIGGERS:
            return []
        try:
            return self._run(result, received_at)
        except PublishError:  # a store write failed (disk full, locked): the worker retries the batch
            raise
        except (BackendError, StoreError) as exc:  # store busy or closed: the worker retries the batch
            raise PublishError(f"pharmacy rules: store unavailable ({type(exc).__name__})") from exc
        except Exception as exc:  # noqa: BLE001 - a rule bug must never stop the feed; ids only in the log
            log.error("pharmacy rules failed error=%s control_id=%s", type(exc).__name__, result.control_id)
            self.metrics.inc("pivot_pharmacy_rule_errors_total", help_text="pharmacy profile rule failures")
            return []

    def expire(self, now: str) -> list[OutRecord]:
        """Re-evaluate the profiles whose active statements have run past their end (no message came):
        to call periodically (e.g. hourly). Returns the records of the statements that changed."""
        if self.store is None or self.settings is None:
            return []
        now_ms = ms_of(now) or 0
        grace = int(self.policy.grace_days * 86_400_000)
        patients: set[str] = set()
        for res in self._search("MedicationStatement", [("status", "active")]):
            end = ms_of((res.get("effectivePeriod") or {}).get("end"))
            pid = ref_id(res.get("subject"), "Patient")
            if end is not None and pid and end + 86_400_000 + grace <= now_ms:
                patients.add(pid)
        out: list[OutRecord] = []
        for pid in sorted(patients):
            states = evaluate(*facts(self._person_facts([pid]), self.policy), now_ms, self.policy)
            changed = self._write_statements(pid, states, set())
            if changed:
                out.extend(records(self.settings, changed, key=pid, sender=SENDER, control_id=f"expire-{now}",
                                   site=SITE, received_at=now))
        return out

    # -- one message -------------------------------------------------------------------------------
    def _run(self, result: MapResult, received_at: str) -> list[OutRecord]:
        assert self.store is not None
        assert self.settings is not None
        pid = str(result.patient_id)
        own = [r for r in result.resources if r.get("resourceType") in _OWN_TYPES]
        self.store.upsert_many(own)
        now = ms_of(received_at) or ms_of(result.event_time) or 0
        ids = self._patient_ids(result)
        stored = self._person_facts(ids)
        mine = {(r["resourceType"], r["id"]) for r in own}
        before_facts = facts([r for r in stored if (r["resourceType"], r["id"]) not in mine], self.policy)
        after_facts = facts(stored, self.policy)
        before = evaluate(*before_facts, now, self.policy)
        after = evaluate(*after_facts, now, self.policy)
        own_refs = {f"{t}/{i}" for t, i in mine}
        touched = {k for k, s in after.items() if own_refs & {*s.sources, *(f.ref for f in s.fills)}}
        changed = self._write_statements(pid, after, touched)
        out = records(self.settings, changed, key=pid, sender=result.sender, control_id=result.control_id,
                      site=_site(result), received_at=received_at) if changed else []
        client = active_enrollment(self.store, ids)
        if client is None:
            return out
        dispenses = [r for r in own if r["resourceType"] == "MedicationDispense" and r.get("status") == "completed"]
        out.extend(self._care_team(client, dispenses, result, received_at))
        found = [*rules_alerts.high_risk(pid, before, after, self.policy),
                 *rules_alerts.active_count(pid, before, after, self.policy),
                 *rules_alerts.multi_pharmacy(pid, before_facts[0], after_facts[0], now, self.policy)]
        out.extend(self._raise(found, client, result, received_at))
        return out

    def _patient_ids(self, result: MapResult) -> list[str]:
        """The person (MapResult.patient_id) and the records its Patient.link names."""
        ids = [str(result.patient_id)]
        for res in result.resources:
            if res.get("resourceType") == "Patient" and res.get("id") == result.patient_id:
                ids += [rid for link in res.get("link") or [] if (rid := ref_id((link or {}).get("other"), "Patient"))]
        return list(dict.fromkeys(ids))

    def _search(self, rtype: str, params: list[tuple[str, str]]) -> list[JSON]:
        assert self.store is not None
        out: list[JSON] = []
        page_params = [*params, ("_count", "1000")]
        while True:
            _q, page = self.store.search(rtype, page_params)
            out.extend(e.resource for e in page.entries if e.resource is not None)
            if page.next is None:
                return out
            page_params = [*params, ("_count", "1000"), ("_page", page.next.encode())]

    def _person_facts(self, ids: list[str]) -> list[JSON]:
        seen: dict[tuple[str, str], JSON] = {}
        for pid in ids:
            for rtype in _READ_TYPES:
                for res in self._search(rtype, [("patient", pid)]):
                    seen.setdefault((rtype, str(res["id"])), res)
        return [seen[k] for k in sorted(seen)]

    def _write_statements(self, pid: str, states: dict[str, DrugState], touched: set[str]) -> list[JSON]:
        """Upsert every drug's statement; return those that changed or belong to ``touched`` drugs."""
        assert self.store is not None
        built = [statement(pid, states[k]) for k in sorted(states)]
        for res in built:
            validate(res)
        written = self.store.upsert_many(built)
        return [res for (_stored, changed), key, res in zip(written, sorted(states), built, strict=True)
                if changed or key in touched]

    # -- enrolled clients --------------------------------------------------------------------------
    def _care_team(self, client: Enrollment, dispenses: list[JSON], result: MapResult,
                   received_at: str) -> list[OutRecord]:
        assert self.store is not None
        assert self.settings is not None
        if client.careteam is None or not dispenses:
            return []
        team = with_pharmacists(client.careteam, dispenses)
        if team is None:
            return []
        validate(team)
        self.store.upsert_many([team])
        client.careteam = team
        log.info("pharmacy careteam updated careteam=%s control_id=%s", team["id"], result.control_id)
        return records(self.settings, [team], key=client.patient_id, sender=result.sender,
                       control_id=result.control_id, site=_site(result), received_at=received_at)

    def _raise(self, found: list[rules_alerts.Alert], client: Enrollment, result: MapResult,
               received_at: str) -> list[OutRecord]:
        assert self.store is not None
        assert self.settings is not None
        recipients = self._recipients(client)
        source = next((r.get("meta", {}).get("source") for r in result.resources if r.get("meta")), None)
        comms: list[tuple[JSON, rules_alerts.Alert]] = []
        for alert in found:
            comm = self._communication(alert, client, recipients, source, received_at)
            if comm["recipient"] and self._new(comm, source):
                validate(comm)
                comms.append((comm, alert))
        if not comms:
            return []
        self.store.upsert_many([c for c, _a in comms])
        pid = client.patient_id
        out = records(self.settings, [c for c, _a in comms], key=pid, sender=result.sender,
                      control_id=result.control_id, site=_site(result), received_at=received_at)
        for comm, alert in comms:
            out.append(alert_record(self.settings, comm, alert.kind, alert.codings, key=pid, sender=result.sender,
                                    control_id=result.control_id, site=_site(result), received_at=received_at))
            self.metrics.inc("pivot_pharmacy_alerts_total", help_text="pharmacy alerts raised", kind=alert.kind)
            if self.audit is not None:
                self.audit.disclose(alert_disclosure(comm, alert.kind))
            log.info("pharmacy alert kind=%s communication=%s control_id=%s", alert.kind, comm["id"],
                     result.control_id)
        return out

    def _recipients(self, client: Enrollment) -> list[JSON]:
        out: dict[str, JSON] = {}
        for role in self.policy.recipients:
            for member in client.members(role):
                out.setdefault(str(member.get("reference") or member), member)
        return list(out.values())

    def _communication(self, alert: rules_alerts.Alert, client: Enrollment, recipients: list[JSON],
                       source: str | None, received_at: str) -> JSON:
        comm: JSON = {"resourceType": "Communication", "id": alert.id}
        if source:
            comm["meta"] = {"source": source}
        if client.careplan is not None:
            comm["basedOn"] = [{"reference": f"CarePlan/{client.careplan['id']}"}]
        comm.update({
            "status": "completed",
            "category": [codes.concept("alert", "Alert", codes.COMM_CATEGORY), codes.concept(alert.kind)],
            "priority": self.policy.priority[alert.kind],
            "subject": {"reference": f"Patient/{client.patient_id}"},
            "about": [{"reference": f"Flag/{client.flag['id']}"},
                      {"reference": f"MedicationStatement/{alert.statement}"}],
            "sent": received_at,
            "recipient": recipients,
            "payload": [{"contentString": alert.text},
                        {"contentReference": {"reference": f"MedicationStatement/{alert.statement}"}}],
        })
        return comm

    def _new(self, comm: JSON, source: str | None) -> bool:
        """True unless this Communication was already raised by another message (the ledger)."""
        assert self.store is not None
        existing = read(self.store, "Communication", str(comm["id"]))
        if existing is None:
            return True
        return source is not None and (existing.get("meta") or {}).get("source") == source

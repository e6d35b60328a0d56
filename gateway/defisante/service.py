"""``DefiSante``: the program's operations over one store and one log (the HTTP routes and the CLI
both call it; the logic lives in the modules it composes).

Authorisation seam: every write goes through ``Authorizer.authorize(action, patient_id, headers)``.
Case-manager authentication is a later issue (security); until then :class:`OpenAuthorizer`
lets every caller act and writes an audit line (action and patient id, never a name). A real
authoriser raises ``StoreError(403)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.defisante import candidates as cand
from gateway.defisante import codes, outcomes
from gateway.defisante.codes import JSON, ref_id
from gateway.defisante.config import ProgramConfig, load_config
from gateway.defisante.enrollment import (
    bad,
    disenroll_resources,
    enroll_resources,
    goals_of,
    parse_enroll,
)
from gateway.defisante.publish import write_and_publish
from gateway.defisante.register import Register, RegisterCache, nam_of
from gateway.defisante.roster import cohort, enrollment, read
from gateway.defisante.shared import register_written
from gateway.delivery.bundle import search_escape
from gateway.errors import StoreError
from gateway.eventlog.base import EventLog
from gateway.eventlog.state.db import StateUnavailable
from gateway.eventlog.state.register import ProgramRegister
from gateway.fhirstore import FhirStore, Outcome
from gateway.fhirstore.bundles import response_bundle
from gateway.fhirstore.dates import date_range, instant_text
from gateway.settings import Settings

audit = logging.getLogger("pivot.audit")


class Authorizer(Protocol):
    def authorize(self, action: str, patient_id: str, headers: Mapping[str, str]) -> None:
        """Raise StoreError(403) when the caller may not do ``action`` for this patient."""
        ...


class OpenAuthorizer:
    """No authentication yet (see the module docstring): allow, and audit."""

    def authorize(self, action: str, patient_id: str, headers: Mapping[str, str]) -> None:
        audit.info("defisante %s patient=%s caller=unauthenticated", action, patient_id)


@dataclass(slots=True)
class CandidateList:
    result: cand.Result
    patients: dict[str, JSON]
    nams: dict[str, str]


class DefiSante:
    """Candidates, enrollment, outcomes and the cohort over ``store`` (+ ``log`` for writes;
    ``register``: the shared register the alert rules of every instance read, written by enroll
    and disenroll before they return)."""

    def __init__(self, store: FhirStore, log: EventLog | None, settings: Settings,
                 config: ProgramConfig | None = None, authorizer: Authorizer | None = None,
                 register: ProgramRegister | None = None) -> None:
        self.store = store
        self.register_state = register
        self.log = log
        self.settings = settings
        self.config = config or load_config()
        self.authorizer: Authorizer = authorizer or OpenAuthorizer()
        self.registers = RegisterCache(store)

    def register(self) -> Register:
        return self.registers.get()

    # -- candidates --------------------------------------------------------------------------------
    def candidates(self, query: cand.Query, exclusions: list[str] | None = None) -> CandidateList:
        try:
            rules = self.config.enabled(exclusions)
        except ValueError as exc:
            raise bad(f"parameter exclusion: {exc}") from None
        register = self.register()
        enrolled: dict[str, bool] = {}
        for client in cohort(self.store):
            person = register.person(client.patient_id)
            enrolled[person] = enrolled.get(person, False) or client.active
        result = cand.find(register, rules, query, enrolled)
        patients: dict[str, JSON] = {}
        for row in [*result.candidates, *result.enrolled]:
            patient = read(self.store, "Patient", row.person_id)
            if patient is not None:
                patients[row.person_id] = patient
        return CandidateList(result, patients, {pid: nam_of(p) for pid, p in patients.items()})

    # -- enrollment --------------------------------------------------------------------------------
    def _person(self, patient_id: str) -> JSON:
        """The Patient to enroll: the person a Patient id belongs to (merges, MRN-only twins)."""
        if read(self.store, "Patient", patient_id) is None:
            raise StoreError("Patient not found", status=404, issue_code="not-found")
        person = self.register().person(patient_id)
        patient = read(self.store, "Patient", person)
        if patient is None:
            raise StoreError("Patient not found", status=404, issue_code="not-found")
        return patient

    def _resolve(self, ref: JSON) -> JSON:
        """A Practitioner given by identifier becomes a literal reference when the store knows it."""
        ident = ref.get("identifier")
        if not isinstance(ident, dict):
            return ref
        token = f"{search_escape(ident['system'])}|{search_escape(ident['value'])}"
        _q, page = self.store.search("Practitioner", [("identifier", token), ("_count", "2")])
        if len(page.entries) == 1:
            return {"reference": f"Practitioner/{page.entries[0].id}", "identifier": ident}
        return ref

    def _write(self, resources: list[JSON], pid: str, action: str) -> list[Outcome]:
        if self.log is None:
            raise StoreError("this process cannot publish (no event log)", status=503, issue_code="transient")
        outcomes_ = write_and_publish(self.store, self.log, self.settings, resources, key=pid, action=action)
        try:
            register_written(self.register_state, resources)
        except StateUnavailable:  # written and published; retrying the operation registers it
            raise StoreError("the shared state is unavailable: retry the operation", status=503,
                             issue_code="transient") from None
        return outcomes_

    def enroll(self, patient_id: str, body: Any, headers: Mapping[str, str]) -> list[Outcome]:
        req = parse_enroll(body)
        self.authorizer.authorize("enroll", patient_id, headers)
        patient = self._person(patient_id)
        pid = str(patient["id"])
        req.case_manager = self._resolve(req.case_manager)
        req.pharmacist = self._resolve(req.pharmacist) if req.pharmacist else None
        req.family_doctor = self._resolve(req.family_doctor) if req.family_doctor else None
        req.members = [(role, self._resolve(ref)) for role, ref in req.members]
        for relative in req.relatives:
            rp = read(self.store, "RelatedPerson", ref_id(relative, "RelatedPerson") or "")
            if rp is None or self.register().person(ref_id(rp.get("patient"), "Patient") or "") != pid:
                raise bad("parameter relatedPerson: not a RelatedPerson of this patient")
        current = enrollment(self.store, pid, self.register_state)
        resources = enroll_resources(patient, req, current, goals_of(self.store, current))
        return self._write(resources, pid, "enroll")

    def disenroll(self, patient_id: str, body: Any, headers: Mapping[str, str]) -> list[Outcome]:
        end: str | None = None
        if body is not None:
            if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
                raise bad("the body must be a Parameters resource (or empty)")
            for p in body.get("parameter") or []:
                if not isinstance(p, dict) or p.get("name") != "end":
                    raise bad("unknown parameter (only end is accepted)")
                end = p.get("valueDateTime") or p.get("valueDate")
                if not isinstance(end, str):
                    raise bad("parameter end: needs valueDateTime or valueDate")
                try:
                    date_range(end)
                except ValueError:
                    raise bad("parameter end: not a FHIR date or dateTime") from None
        self.authorizer.authorize("disenroll", patient_id, headers)
        pid = str(self._person(patient_id)["id"])
        current = enrollment(self.store, pid, self.register_state)
        if current is None:
            raise StoreError("this patient is not enrolled in Défi Santé", status=404, issue_code="not-found")
        return self._write(disenroll_resources(current, goals_of(self.store, current), end), pid, "disenroll")

    # -- outcomes and the cohort --------------------------------------------------------------------
    def outcomes(self, as_of: str | None = None,
                 patient: str | None = None) -> tuple[list[outcomes.ClientOutcome], int]:
        try:
            as_of_ms = outcomes.as_of_ms(as_of)
        except ValueError:
            raise bad("parameter date: not a FHIR date or dateTime") from None
        clients = cohort(self.store)
        if patient:
            person = self.register().person(patient)
            clients = [c for c in clients if person in (c.patient_id, self.register().person(c.patient_id))]
        return outcomes.client_outcomes(self.register(), clients, as_of_ms, self.min_follow_up_days), as_of_ms

    @property
    def min_follow_up_days(self) -> int:
        """Clients followed less are listed but not compared (``PIVOT_OUTCOMES_MIN_FOLLOW_UP_DAYS``)."""
        return self.settings.outcomes_min_follow_up_days

    def group(self) -> JSON:
        """The cohort as a Group (every client ever enrolled; member.inactive once ended)."""
        members = []
        for client in cohort(self.store):
            period = {k: v for k, v in (("start", client.start), ("end", client.end)) if v}
            members.append({"entity": {"reference": f"Patient/{client.patient_id}"}, "period": period,
                            "inactive": not client.active})
        group: JSON = {"resourceType": "Group", "id": codes.PROGRAM, "type": "person", "actual": True,
                       "code": codes.program_concept(), "name": "Défi Santé — cohorte",
                       "quantity": len(members)}
        if members:
            group["member"] = members
        return group


def outcome_bundle(outcomes_: list[Outcome]) -> JSON:
    """What an enroll / disenroll answers: a transaction-response Bundle of what was written."""
    entries = []
    for o in outcomes_:
        status = "201 Created" if o.status == "created" else "200 OK"
        entries.append({"resource": o.resource,
                        "response": {"status": status, "location": f"{o.rtype}/{o.id}/_history/{o.version}",
                                     "etag": f'W/"{o.version}"', "lastModified": instant_text(o.lu_ms),
                                     "outcome": {"resourceType": "OperationOutcome", "issue": [
                                         {"severity": "information", "code": "informational",
                                          "diagnostics": o.status}]}}})
    return response_bundle("transaction-response", entries)

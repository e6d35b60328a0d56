"""AuditEvents of care-team changes, whatever route made them (REST, Bundle, an operation, a rule).

A CareTeam decides who learns about a client (``gateway/fhirstore/careteam.py``), so every change
of one — created, updated, deleted — is an AuditEvent, not only those an HTTP request audits:
a listener on the store (it sees every committed write of this process: the FHIR API, the
transactions, ``$defi-sante-enroll``/``-disenroll``, the pharmacy rules joining a pharmacist, the
store sink) hands each CareTeam change to the audit trail as a :class:`DisclosureRecord` of
subtype ``careteam-change``:

- ``agent[0]`` Pivot; then, as recipients, the Organizations (and PractitionerRoles) that are
  members after the change — those the care-team rule now lets learn about the client;
- ``entity``: the client (Patient, role 1), ``CareTeam/<id>/_history/<n>`` (role 4) with details
  ``change`` (created / updated / deleted) and ``client``: the client id of the HTTP request that
  made it (:data:`ACTING_CLIENT`, set by the guard for the span of a request), else ``pivot`` (a
  rule, the store sink). References and ids only: no names, no text.

Queued like the other disclosures (nobody waits; see audit_trail.py).
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

from gateway.fhirstore.careteam import clients_of
from gateway.fhirstore.writer import Outcome
from gateway.security.audit_disclosure import DisclosureRecord

ACTING_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("pivot_acting_client", default="")
SUBTYPE = "careteam-change"


class Disclosures(Protocol):
    def disclose(self, record: DisclosureRecord) -> None: ...


def _organizations(team: dict[str, Any] | None) -> list[str]:
    out: list[str] = []
    for participant in (team or {}).get("participant") or []:
        if not isinstance(participant, dict):
            continue
        for key in ("member", "onBehalfOf"):
            ref = participant.get(key)
            text = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(text, str) and text.startswith(("Organization/", "PractitionerRole/")):
                out.append(text)
    return list(dict.fromkeys(out))


def careteam_record(change: Outcome, previous: dict[str, Any] | None, client: str) -> DisclosureRecord:
    """The AuditEvent record of one committed CareTeam change (``previous``: for a deletion)."""
    team = change.resource if change.resource is not None else previous
    patients = tuple(f"Patient/{p}" for p in sorted(clients_of(team))) if team else ()
    members = _organizations(change.resource)
    details = [("change", change.status), ("client", client or "pivot")]
    return DisclosureRecord(SUBTYPE, patients, (f"CareTeam/{change.id}/_history/{change.version}",),
                            tuple(members), tuple(details))


class CareTeamAudit:
    """The store listener (``store.add_listener(CareTeamAudit(trail, store))``)."""

    def __init__(self, trail: Disclosures, store: Any) -> None:
        self.trail = trail
        self.store = store

    def __call__(self, changes: list[Outcome]) -> None:
        client = ACTING_CLIENT.get()
        for change in changes:
            if change.rtype != "CareTeam" or not change.changed:
                continue
            previous = None
            if change.resource is None and change.version > 1:
                try:
                    previous = self.store.vread("CareTeam", change.id, str(change.version - 1)).resource
                except Exception:  # noqa: BLE001 - the audit names the CareTeam even without its subject
                    previous = None
            self.trail.disclose(careteam_record(change, previous, client))

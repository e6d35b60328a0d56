"""Who may be told about a client: the care-team rule, checked against the FHIR store.

A subscriber learns nothing about a client unless

- its organisation (the Subscription's ``subscription-owner`` extension, an Organization) is in one
  of that client's **active** CareTeams — as ``CareTeam.participant.member``, as
  ``CareTeam.participant.onBehalfOf`` (a practitioner of the clinic acting for it), or through a
  member PractitionerRole whose ``organization`` it is — found with
  ``CareTeam?patient=Patient/<id>&status=active``; or
- the Subscription carries ``subscription-program-wide`` = true (the program itself, e.g. the
  case-management team's own system).

and, in both cases, no active Consent of the client denies that organisation
(``Consent.provision`` — or one nested provision — of type ``deny`` whose ``actor.reference`` is
the owner Organization): a client can refuse one organisation even inside the care team.

The client of a resource is the Patient itself, or the Patients its ``patient``/``subject`` search
parameters point to (all of them must pass). A resource of a type that can be about a client but
names none is withheld; types that are never about a client (Organization, Practitioner,
Location…) pass. A Subscription without an owner and without program-wide authorisation
therefore receives nothing about any client.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import StoreError
from gateway.fhirstore import FhirStore
from gateway.fhirstore.extract import extract, param_key, split_reference
from gateway.fhirstore.params import SEARCH_PARAMS
from gateway.subscriptions.model import SubscriptionSpec

JSON = dict[str, Any]
_PAGE = 200


def about_clients(rtype: str) -> bool:
    """True for Patient and every type with a ``patient`` search parameter."""
    return rtype == "Patient" or "patient" in SEARCH_PARAMS.get(rtype, {})


def clients_of(resource: JSON) -> set[str]:
    """Ids of the Patients ``resource`` is about (via its ``patient`` and ``subject`` parameters)."""
    rtype = str(resource.get("resourceType"))
    if rtype == "Patient":
        return {str(resource.get("id"))}
    keys = {param_key(rtype, "patient"), param_key(rtype, "subject")}
    return {tid for key, ttype, tid in extract(resource).refs if key in keys and ttype == "Patient"}


def _is_org(ref: Any, org_id: str) -> bool:
    target = split_reference(ref.get("reference", "")) if isinstance(ref, dict) else None
    return target == ("Organization", org_id)


def _denies(provision: Any, org_id: str, depth: int = 0) -> bool:
    if not isinstance(provision, dict) or depth > 3:
        return False
    if provision.get("type") == "deny" and any(isinstance(a, dict) and _is_org(a.get("reference"), org_id)
                                               for a in provision.get("actor", []) or []):
        return True
    return any(_denies(p, org_id, depth + 1) for p in provision.get("provision", []) or [])


class CareTeamAuthorizer:
    """The care-team rule (and consent denials) over one FHIR store."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store

    def allowed(self, spec: SubscriptionSpec, resource: JSON) -> bool:
        """May ``spec``'s subscriber be told about ``resource``?"""
        if not about_clients(str(resource.get("resourceType"))):
            return True
        clients = clients_of(resource)
        owner = spec.owner
        if not clients or (owner is None and not spec.program_wide):
            return False
        if owner is not None and any(self.denied_by_consent(client, owner) for client in clients):
            return False
        return spec.program_wide or (owner is not None and all(self.in_care_team(c, owner) for c in clients))

    def _active(self, rtype: str, patient_id: str) -> list[JSON]:
        params = [("patient", f"Patient/{patient_id}"), ("status", "active"), ("_count", str(_PAGE)),
                  ("_total", "none")]
        _q, page = self.store.search(rtype, params)
        return [entry.resource for entry in page.entries if entry.resource is not None]

    def in_care_team(self, patient_id: str, org_id: str) -> bool:
        """Is Organization ``org_id`` a member (or acted for) in an active CareTeam of the client?"""
        for team in self._active("CareTeam", patient_id):
            for participant in team.get("participant", []) or []:
                if isinstance(participant, dict) and (_is_org(participant.get("member"), org_id)
                                                      or _is_org(participant.get("onBehalfOf"), org_id)
                                                      or self._role_of(participant.get("member"), org_id)):
                    return True
        return False

    def _role_of(self, member: Any, org_id: str) -> bool:
        """A PractitionerRole member whose ``organization`` is ``org_id`` (a doctor of that clinic)."""
        target = split_reference(member.get("reference", "")) if isinstance(member, dict) else None
        if target is None or target[0] != "PractitionerRole":
            return False
        try:
            role = self.store.read("PractitionerRole", target[1]).resource or {}
        except StoreError:
            return False
        return _is_org(role.get("organization"), org_id)

    def denied_by_consent(self, patient_id: str, org_id: str) -> bool:
        """Does an active Consent of the client deny Organization ``org_id``?"""
        return any(_denies(consent.get("provision"), org_id) for consent in self._active("Consent", patient_id))

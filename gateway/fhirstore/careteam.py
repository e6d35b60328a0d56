"""Who may learn about a client: the care-team and consent rule, checked against the FHIR store.

One rule for every audience: a Subscription's owner (``gateway.subscriptions.authz``) and an
organisation-scoped API client (``gateway.http.visibility``). An :class:`Audience` — an
Organization id and a program-wide flag — learns nothing about a client unless

- the Organization is in one of that client's **active** CareTeams — as
  ``CareTeam.participant.member``, as ``CareTeam.participant.onBehalfOf`` (a practitioner of the
  clinic acting for it), or through a member PractitionerRole whose ``organization`` it is —
  found with ``CareTeam?patient=Patient/<id>&status=active``; or
- the audience is program-wide (the program itself, e.g. the case-management team's own system).

and, in both cases, no active Consent of the client denies that Organization
(``Consent.provision`` — or one nested provision — of type ``deny`` whose ``actor.reference`` is
the Organization): a client can refuse one organisation even inside the care team.

The clients of a resource are the Patient itself, or the Patients its ``patient``/``subject``
search parameters point to (all of them must pass). A resource of a type that can be about a
client but names none is withheld; types that are never about a client (Organization,
Practitioner, Location…) pass. An audience without an Organization and not program-wide
therefore learns nothing about any client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import StoreError
from gateway.fhirstore.extract import extract, param_key, split_reference
from gateway.fhirstore.params import SEARCH_PARAMS
from gateway.fhirstore.store import FhirStore

JSON = dict[str, Any]
_PAGE = 200
_CLIENT_PARAMS = ("patient", "subject")


@dataclass(frozen=True, slots=True)
class Audience:
    """Who would learn about a client: an Organization id (None: none) and the program-wide flag."""

    organization: str | None
    program_wide: bool = False


def about_clients(rtype: str) -> bool:
    """True for Patient and every type with a ``patient`` or ``subject`` search parameter."""
    params = SEARCH_PARAMS.get(rtype, {})
    return rtype == "Patient" or any(name in params for name in _CLIENT_PARAMS)


def clients_of(resource: JSON) -> set[str]:
    """Ids of the Patients ``resource`` is about (via its ``patient`` and ``subject`` parameters)."""
    rtype = str(resource.get("resourceType"))
    if rtype == "Patient":
        return {str(resource.get("id"))}
    keys = {param_key(rtype, name) for name in _CLIENT_PARAMS}
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


class CareTeamRule:
    """The care-team rule (and consent denials) over one FHIR store.

    ``memo``: remember each (audience, client) answer — for the span of one HTTP request, never
    for a long-lived rule (a CareTeam or Consent written later must count).
    """

    def __init__(self, store: FhirStore, *, memo: bool = False) -> None:
        self.store = store
        self._memo: dict[tuple[Audience, str], bool] | None = {} if memo else None

    def allowed(self, audience: Audience, resource: JSON) -> bool:
        """May ``audience`` learn about ``resource``?"""
        if not about_clients(str(resource.get("resourceType"))):
            return True
        clients = clients_of(resource)
        return bool(clients) and all(self.may_know(audience, client) for client in sorted(clients))

    def may_know(self, audience: Audience, patient_id: str) -> bool:
        """May ``audience`` learn about the client ``patient_id``?"""
        if self._memo is not None and (audience, patient_id) in self._memo:
            return self._memo[(audience, patient_id)]
        org = audience.organization
        if org is None:
            answer = audience.program_wide
        else:
            answer = not self.denied_by_consent(patient_id, org) and (
                audience.program_wide or self.in_care_team(patient_id, org))
        if self._memo is not None:
            self._memo[(audience, patient_id)] = answer
        return answer

    def _active(self, rtype: str, patient_id: str) -> list[JSON]:
        params = [("patient", f"Patient/{patient_id}"), ("status", "active"), ("_count", str(_PAGE)),
                  ("_total", "none")]
        _q, page = self.store.search(rtype, params)
        return [entry.resource for entry in page.entries if entry.resource is not None]

    def in_care_team(self, patient_id: str, org_id: str) -> bool:
        """Is Organization ``org_id`` a member (or acted for) in an active CareTeam of the client?"""
        return any(self.team_includes(team, org_id) for team in self._active("CareTeam", patient_id))

    def team_includes(self, team: JSON, org_id: str) -> bool:
        """Is Organization ``org_id`` a participant of this CareTeam (whatever its status)?"""
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

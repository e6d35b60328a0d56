"""The privacy boundary: what one caller may see and change about a client — the one decision point.

Every route that returns or changes a client's data asks a :class:`Boundary` (built per request by
:func:`boundary_of` from the authenticated Principal the guard put in the request state); the
care-team and consent rule itself is :class:`~gateway.fhirstore.careteam.CareTeamRule` (shared with
the subscriptions). Reach comes from the client's **registration** (scopes, ``organization``,
``program_wide`` in the clients or secrets file), never from a resource the caller sends:

    registration                     reach (on top of its scopes)
    no organization                  unbound: every client (hospital IT, the program's own systems)
    organization + program_wide      every client, except those whose Consent denies the organisation
    organization                     bound: the clients whose active CareTeam includes the organisation
                                     (member, onBehalfOf, a member PractitionerRole of it), less denials
    PIVOT_AUTH=none                  unbound (development on loopback only)

The rules every route applies (README, "Security"):

1. **See**: a resource about a client (Patient, or ``patient``/``subject`` naming one) only when
   the caller sees that client; anything else is answered as unknown (404) or left out of a list.
2. **Scopes also bound what comes along**: an ``_include``/``_revinclude``d resource, a Bundle
   entry, a program view, all need the scope of their own type (:meth:`Boundary.may_read_type`).
3. **Program views** (candidates, roster, outcomes, alerts, the cohort Group, the alert stream)
   list the seen clients only, and their figures are computed over those clients.
4. **Change**: a bound client writes only about clients it already sees (the current version and
   the new content, 403 otherwise; DELETE of one it does not see: 404), never creates a CareTeam
   and changes only CareTeams it is already in, never moves a PractitionerRole to another
   Organization (a member role would carry it into care teams), and never changes a Patient's
   ``identifier`` or ``link`` (a NAM copied from a stranger would fold the stranger into a client
   it sees, and the console shows a person's visits at every site). Enrollment
   (``$defi-sante-enroll``/``-disenroll``) is the program's: refused to bound clients.
5. **Subscriptions**: the owner and the program-wide flag are set from the registration; a
   request claiming more is a 403 naming why. A bound client reads and changes only its own
   subscriptions (the others are unknown to it: 404), and their ``$status``/``$events`` only.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.errors import StoreError
from gateway.fhirstore import FhirStore
from gateway.fhirstore.careteam import Audience, CareTeamRule, about_clients
from gateway.fhirstore.extract import split_reference
from gateway.fhirstore.interactions import Interaction
from gateway.fhirstore.writer import Writer
from gateway.security.clients import Principal
from gateway.security.middleware import STATE_PRINCIPAL
from gateway.security.scopes import permits

JSON = dict[str, Any]
_CANONICAL = "https://pivot.example.org/fhir/StructureDefinition"  # the extensions of subscriptions/model.py
EXT_OWNER = f"{_CANONICAL}/subscription-owner"
EXT_PROGRAM_WIDE = f"{_CANONICAL}/subscription-program-wide"
_IDENTITY = ("identifier", "link")  # what folds Patients into one person (gateway/defisante/register.py)


def forbidden(why: str) -> StoreError:
    return StoreError(why, status=403, issue_code="forbidden")


def _ref_of(value: Any) -> tuple[str, str] | None:
    return split_reference(value.get("reference", "")) if isinstance(value, dict) else None


class Boundary:
    """What one caller may see and change (see the module docstring); one per request."""

    def __init__(self, store: FhirStore, principal: Principal | None) -> None:
        self.store = store
        self.principal = principal
        authenticated = principal is not None and principal.method != "none"
        org = principal.organization if principal is not None and authenticated else ""
        self.audience: Audience | None = Audience(org, principal.program_wide) if principal and org else None
        self.rule = CareTeamRule(store, memo=True)

    # -- reach -------------------------------------------------------------------------------------
    @property
    def program_wide(self) -> bool:
        """Reach over the whole program (unbound, or registered program_wide)."""
        return self.audience is None or self.audience.program_wide

    @property
    def organization(self) -> str:
        return (self.audience.organization or "") if self.audience is not None else ""

    def sees_client(self, patient_id: str) -> bool:
        """May the caller learn about the client ``patient_id``?"""
        return self.audience is None or self.rule.may_know(self.audience, patient_id)

    def sees(self, resource: JSON | None, rtype: str = "") -> bool:
        """May the caller learn about ``resource`` (None: a deletion, seen only if about nobody)?"""
        if resource is None:
            return self.audience is None or not (about_clients(rtype) or rtype == "Subscription")
        if resource.get("resourceType") == "Subscription":
            return self.owns(resource)
        return self.audience is None or self.rule.allowed(self.audience, resource)

    def owns(self, subscription: JSON) -> bool:
        """Is this Subscription the caller's (its organisation's; any, for the program's reach)?"""
        if self.program_wide:
            return True
        owner = next((_ref_of(e.get("valueReference")) for e in subscription.get("extension") or []
                      if isinstance(e, dict) and e.get("url") == EXT_OWNER), None)
        return owner == ("Organization", self.organization)

    def may_read_type(self, rtype: str) -> bool:
        """Do the caller's scopes let it read resources of ``rtype`` (rule 2)?"""
        return self.principal is None or permits(self.principal.scopes, rtype, "r")

    def visible(self, resource: JSON | None, rtype: str) -> bool:
        """Rules 1 and 2 together: of a type it may read, about clients it sees."""
        return self.may_read_type(rtype) and self.sees(resource, rtype)

    def require_program(self, what: str) -> None:
        """403 unless the caller has the program's reach (enrollment, rule 4)."""
        if not self.program_wide:
            raise forbidden(f"{what} is done by the program's staff: a client registered without organization, "
                            "or program_wide; an organisation's client cannot change who is enrolled")

    # -- writes (the WriteGuard of gateway/fhirstore/transaction.py) ----------------------------------
    def prepare(self, inter: Interaction) -> None:
        """Before the write lock: a Subscription's reach is set from the registration (rule 5)."""
        if inter.rtype == "Subscription" and isinstance(inter.resource, dict):
            inter.resource = self.stamp_subscription(inter.resource)

    def check(self, writer: Writer, inter: Interaction) -> None:
        """Inside the transaction, once the target id is known: rule 4 (and 5 for Subscriptions)."""
        if self.audience is None or inter.method == "GET" or inter.target is None:
            return
        try:
            old = writer.read(inter.rtype, inter.target).resource
        except StoreError:
            old = None
        new = None if inter.method == "DELETE" else inter.resource
        if inter.rtype == "Subscription":
            self._own_subscription(old)
        elif old is not None and not self.sees(old, inter.rtype):
            if inter.method == "DELETE":
                raise StoreError("resource not found", status=404, issue_code="not-found")
            raise forbidden("an organisation's client changes only the data of clients it already sees")
        if new is not None and not self.sees(new, inter.rtype):
            raise forbidden("an organisation's client writes only about clients it already sees "
                            "(enrollment through $defi-sante-enroll is the way into a care team)")
        if inter.rtype == "CareTeam" and not self.program_wide:
            self._own_team(old)
        if inter.rtype == "PractitionerRole" and not self.program_wide:
            self._same_organization(writer, inter.target, old, new)
        if inter.rtype == "Patient" and not self.program_wide and old is not None and new is not None and \
                any(old.get(k) != new.get(k) for k in _IDENTITY):
            raise forbidden("an organisation's client cannot change a Patient's identifiers or links: they "
                            "decide who the person is across sites (the sites' feeds and merges do)")

    def reach(self, writer: Writer, rtype: str, ids: list[str]) -> list[str]:
        """The ids among ``ids`` (a conditional look-up's matches) the caller may know: an
        If-None-Exist, a conditional update or reference matching a client outside its care teams
        answers as if nothing matched (then ``check`` refuses the write as for any unknown client)."""
        if self.audience is None:
            return ids
        known = []
        for rid in ids:
            try:
                current = writer.read(rtype, rid).resource
            except StoreError:
                continue
            if self.sees(current, rtype):
                known.append(rid)
        return known

    def _own_team(self, old: JSON | None) -> None:
        org = self.organization
        if old is None or not self.rule.team_includes(old, org):
            raise forbidden("an organisation's client changes only the care teams it is already in; "
                            "joining one is enrollment ($defi-sante-enroll, by the program's staff)")

    def _same_organization(self, writer: Writer, rid: str, old: JSON | None, new: JSON | None) -> None:
        before = _ref_of((old or {}).get("organization"))
        after = _ref_of((new or {}).get("organization"))
        if old is not None and before != after:
            raise forbidden("an organisation's client cannot move a PractitionerRole to another Organization")
        if old is None and after is not None and writer.match_ids("CareTeam", [("participant",
                                                                                f"PractitionerRole/{rid}")]):
            raise forbidden("this PractitionerRole is already a member of a care team")

    # -- Subscriptions --------------------------------------------------------------------------------
    def stamp_subscription(self, resource: JSON) -> JSON:
        """``subscription-owner`` and ``subscription-program-wide`` from the registration (rule 5)."""
        principal = self.principal
        if principal is None or principal.method == "none":
            return resource  # no registration to take reach from (development): as written
        exts = [e for e in resource.get("extension") or [] if isinstance(e, dict)]
        org = principal.organization
        for ext in exts:
            if ext.get("url") == EXT_PROGRAM_WIDE and ext.get("valueBoolean") is True and not principal.program_wide:
                raise forbidden("subscription-program-wide: this client is not registered program_wide; "
                                "its subscriptions reach the clients of its organisation's care teams only")
            if ext.get("url") == EXT_OWNER and _ref_of(ext.get("valueReference")) != ("Organization", org):
                raise forbidden("subscription-owner: a subscription is owned by the organisation the client is "
                                "registered with" + (f" (Organization/{org})" if org else
                                                     " (this client is registered without one)"))
        kept = [e for e in exts if e.get("url") not in (EXT_OWNER, EXT_PROGRAM_WIDE)]
        if org:
            kept.append({"url": EXT_OWNER, "valueReference": {"reference": f"Organization/{org}"}})
        if principal.program_wide:
            kept.append({"url": EXT_PROGRAM_WIDE, "valueBoolean": True})
        out = {k: v for k, v in resource.items() if k != "extension"}
        return {**out, "extension": kept} if kept else out

    def _own_subscription(self, old: JSON | None) -> None:
        if old is not None and not self.owns(old):
            raise StoreError("resource not found", status=404, issue_code="not-found")


def boundary_of(request: Request, store: FhirStore) -> Boundary:
    """The boundary of the caller of ``request`` (no Principal: no guard installed, unbound)."""
    principal = getattr(request.state, STATE_PRINCIPAL, None)
    return Boundary(store, principal if isinstance(principal, Principal) else None)

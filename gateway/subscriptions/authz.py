"""Who may be told about a client: the care-team and consent rule, for a Subscription's owner.

The rule itself is :mod:`gateway.fhirstore.careteam` (shared with the FHIR API's
organisation-scoped clients); here the audience is the Subscription's ``subscription-owner``
extension (an Organization) and its ``subscription-program-wide`` flag. A Subscription without an
owner and without program-wide authorisation therefore receives nothing about any client.
"""

from __future__ import annotations

from typing import Any

from gateway.fhirstore import FhirStore
from gateway.fhirstore.careteam import Audience, CareTeamRule, about_clients, clients_of
from gateway.subscriptions.model import SubscriptionSpec

__all__ = ["CareTeamAuthorizer", "about_clients", "clients_of"]


class CareTeamAuthorizer:
    """The care-team rule (and consent denials) for subscribers, over one FHIR store."""

    def __init__(self, store: FhirStore) -> None:
        self.rule = CareTeamRule(store)

    def allowed(self, spec: SubscriptionSpec, resource: dict[str, Any]) -> bool:
        """May ``spec``'s subscriber be told about ``resource``?"""
        return self.rule.allowed(Audience(spec.owner, spec.program_wide), resource)

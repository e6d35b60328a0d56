"""Who may be told about a client: the care-team and consent rule, for a Subscription's owner.

The rule itself is :mod:`gateway.fhirstore.careteam` (shared with the FHIR API's
organisation-scoped clients); here the audience is the Subscription's ``subscription-owner``
extension (an Organization) and its ``subscription-program-wide`` flag. A Subscription without an
owner and without program-wide authorisation would therefore receive nothing about any client: such
a Subscription to a topic about clients is refused when written (422, :data:`UNREACHABLE`). Through
the API with authentication on, both extensions are set from the caller's registration
(``gateway/security/boundary.py``), never taken from the request.
"""

from __future__ import annotations

from typing import Any

from gateway.fhirstore import FhirStore
from gateway.fhirstore.careteam import Audience, CareTeamRule, about_clients, clients_of
from gateway.subscriptions.model import SubscriptionSpec

__all__ = ["UNREACHABLE", "CareTeamAuthorizer", "about_clients", "clients_of", "unreachable"]

UNREACHABLE = ("this Subscription would never be notified: it has no owner organisation (subscription-owner) and "
               "is not program-wide, so the care-team rule lets it learn about no client. Register the client "
               "that creates it with an \"organization\" (its subscriptions are then owned by that Organization) "
               "or as \"program_wide\"; without authentication (PIVOT_AUTH=none), set the subscription-owner "
               "extension")


def unreachable(spec: SubscriptionSpec) -> bool:
    """A live Subscription about clients that no audience rule would ever let be told anything."""
    return spec.status != "off" and spec.owner is None and not spec.program_wide and \
        about_clients(spec.topic.resource)


class CareTeamAuthorizer:
    """The care-team rule (and consent denials) for subscribers, over one FHIR store."""

    def __init__(self, store: FhirStore) -> None:
        self.rule = CareTeamRule(store)

    def allowed(self, spec: SubscriptionSpec, resource: dict[str, Any]) -> bool:
        """May ``spec``'s subscriber be told about ``resource``?"""
        return self.rule.allowed(Audience(spec.owner, spec.program_wide), resource)

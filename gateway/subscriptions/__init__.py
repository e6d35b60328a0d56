"""FHIR R4 Subscriptions (rest-hook) on the embedded store, plain R4 and Backport-IG topic-based.

    topics.py    our SubscriptionTopics (data: schemas/subscriptions/) and plain-criteria topics
    model.py     a Subscription resource → checked SubscriptionSpec (extension URLs live here)
    authz.py     the care-team rule (gateway/fhirstore/careteam.py) for a Subscription's owner
    state.py     event numbers, queues and failures per subscription (subscriptions.sqlite)
    notify.py    notification Bundles: SubscriptionStatus Parameters, handshake/heartbeat/events
    endpoint.py  SSRF checks: http(s) endpoints on public addresses only, pinned at delivery
    channel.py   one delivery thread per subscription: retries, backoff, error and recovery
    engine.py    SubscriptionEngine: store listener → events → channels; $status and $events
    routes.py    GET|POST /fhir/Subscription/{id}/$status and /$events

Public API::

    engine = SubscriptionEngine(store, SubscriptionConfig(base_url=…, state_path=…, audit=trail,
                                                          allow_private=settings.subscription_allow_private))
    engine.start() … engine.stop()
    app.include_router(make_subscription_router(lambda: engine), prefix="/fhir")  # before /fhir's own

See README.md in this folder for what a subscriber sends and receives.
"""

from gateway.subscriptions.channel import RetryPolicy
from gateway.subscriptions.engine import Delivered, SubscriptionConfig, SubscriptionEngine
from gateway.subscriptions.routes import make_subscription_router

__all__ = ["Delivered", "RetryPolicy", "SubscriptionConfig", "SubscriptionEngine", "make_subscription_router"]

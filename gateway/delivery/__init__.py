"""Delivery to an external FHIR R4 server (PIVOT_FHIR_BASE_URL): one transaction Bundle per message.

Public API::

    message_bundle(resources, sender=…, control_id=…) -> Bundle   # pure, deterministic (bundle.py)
    BUNDLE_TOPIC = "fhir.Bundle"                                  # key = patient id
    client_from_settings(settings) -> FhirClient                  # ConfigError naming the PIVOT_ setting
    FhirClient.deliver(bundle, stop) -> Delivery                  # idempotent, retried (client.py)
    DeliverySink(settings, log, metrics, client)                  # the "deliver" worker (sink.py)

See README.md for what Pivot needs from the server and why the bundle is written the way it is.
"""

from gateway.delivery.bundle import BUNDLE_TOPIC, message_bundle, patient_key
from gateway.delivery.client import Delivery, DeliveryStopped, FhirClient, FhirRefused
from gateway.delivery.config import client_from_settings

__all__ = ["BUNDLE_TOPIC", "Delivery", "DeliveryStopped", "FhirClient", "FhirRefused", "client_from_settings",
           "message_bundle", "patient_key"]

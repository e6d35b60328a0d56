"""HTTP surface of the gateway: the FHIR REST API of the embedded store (``make_fhir_router``)."""

from gateway.http.fhir_io import install_fhir_error_handler
from gateway.http.fhir_routes import make_fhir_router

__all__ = ["install_fhir_error_handler", "make_fhir_router"]

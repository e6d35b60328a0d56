"""FHIR R4 helpers. ``gateway.fhir.models`` is the only module that imports fhir.resources."""

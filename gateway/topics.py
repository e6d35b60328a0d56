"""Topic names (without the PIVOT_KAFKA_TOPIC_PREFIX) and the FHIR resource types published."""

from __future__ import annotations

HL7V2_IN = "hl7v2.in"
# raw messages received in batches (files: `pivot ingest`, the file connector): a history backfill.
# The mapping worker takes them only when hl7v2.in has nothing waiting (gateway/eventlog/worker.py),
# so an ER arrival is never queued behind a year of history.
HL7V2_BULK = "hl7v2.bulk"
DEADLETTER = "deadletter"
ALERTS = "defisante.alerts"

# One topic ``fhir.<Type>`` per resource type the gateway produces.
FHIR_TYPES: tuple[str, ...] = (
    "Patient", "Encounter", "Practitioner", "PractitionerRole", "Organization", "RelatedPerson",
    "Condition", "Location", "Provenance",
    # Défi Santé (issue #4): enrollment (Flag, Goal, CarePlan, CareTeam, Consent) and ER alerts
    "Flag", "Goal", "CarePlan", "CareTeam", "Consent", "Communication",
    # Community pharmacies (issue #5): mapped orders, dispenses, administrations; the profile
    "MedicationRequest", "MedicationDispense", "MedicationAdministration", "MedicationStatement",
)


def fhir_topic(resource_type: str) -> str:
    return f"fhir.{resource_type}"

"""Topic names (without the PIVOT_KAFKA_TOPIC_PREFIX) and the FHIR resource types published."""

from __future__ import annotations

HL7V2_IN = "hl7v2.in"
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

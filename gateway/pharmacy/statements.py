"""One MedicationStatement per person and drug: the profile as FHIR (``profile.DrugState`` -> JSON).

    id               stable_id("MedicationStatement", "pharmacy-profile", person, drug key)
    status           active | completed | stopped (profile.py)
    category         community (medication-statement-category)
    medication       the latest fill's CodeableConcept (DIN + ATC)
    effectivePeriod  start of the current episode -> its (expected) end, or the stop time
    dateAsserted     the latest fill (or the stop that ended the episode)
    informationSource the pharmacy of the latest fill (Organization)
    derivedFrom      the episode's MedicationDispenses / MedicationRequests (and the stop)
    dosage           the latest fill's dosage

Nothing in it depends on the wall clock but ``status`` (a function of the time of evaluation), so
re-evaluating with no new fact and no change of state writes nothing new.
"""

from __future__ import annotations

from typing import Any

from gateway.pharmacy.profile import DrugState
from mappings.ids import stable_id

JSON = dict[str, Any]
CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medication-statement-category",
                        "code": "community", "display": "Community"}]}
_STOPPED_REASON = {"text": "Cessé par la pharmacie (ordonnance cessée, ou médicament absent du profil transmis)"}
MAX_SOURCES = 50


def statement_id(patient_id: str, drug: str) -> str:
    return stable_id("MedicationStatement", "pharmacy-profile", patient_id, drug)


def statement(patient_id: str, state: DrugState) -> JSON:
    """The MedicationStatement of ``state`` for the person ``patient_id``."""
    out: JSON = {"resourceType": "MedicationStatement", "id": statement_id(patient_id, state.drug),
                 "status": state.status}
    if state.status == "stopped":
        out["statusReason"] = [dict(_STOPPED_REASON)]
    out["category"] = CATEGORY
    out["medicationCodeableConcept"] = state.concept
    out["subject"] = {"reference": f"Patient/{patient_id}"}
    out["effectivePeriod"] = {"start": state.start_text, "end": state.end_text}
    out["dateAsserted"] = state.asserted_text
    if state.pharmacy:
        out["informationSource"] = {"reference": state.pharmacy}
    out["derivedFrom"] = [{"reference": ref} for ref in state.sources[-MAX_SOURCES:]]
    if state.dosage:
        out["dosage"] = [state.dosage]
    return out

"""Names the Défi Santé resources share: canonical URLs, our codes, external systems, ids.

Our canonical base is ``https://pivot.example.org/fhir`` (the CodeSystem and StructureDefinitions
under ``schemas/defisante/`` carry it); a deployment that publishes them elsewhere keeps these
URLs as identifiers (canonical URLs are names, not addresses).
"""

from __future__ import annotations

from typing import Any

from mappings.ids import stable_id

JSON = dict[str, Any]

CANONICAL = "https://pivot.example.org/fhir"
CODESYSTEM = f"{CANONICAL}/CodeSystem/defi-sante"
PROGRAM = "defi-sante"

CANDIDATE_EXT = f"{CANONICAL}/StructureDefinition/defi-sante-candidate"
FLAG_PROFILE = f"{CANONICAL}/StructureDefinition/defi-sante-flag"
ALERT_PROFILE = f"{CANONICAL}/StructureDefinition/defi-sante-alert"

ICD10CA = "https://fhir.infoway-inforoute.ca/CodeSystem/icd10ca"
NAM_SYSTEM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id"
COMM_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOINC = "http://loinc.org"

# CareTeam participant roles (our CodeSystem): the parameter name of $defi-sante-enroll → code.
ROLES: dict[str, str] = {
    "caseManager": "case-manager",
    "familyDoctor": "family-doctor",
    "pharmacist": "pharmacist",
}
MEMBER_ROLES = frozenset({"addiction-worker", "community-organisation", "clsc-program", "other-member"})
ALL_ROLES = frozenset(ROLES.values()) | MEMBER_ROLES

# Communication kinds (our CodeSystem), one Communication id per (encounter, kind).
ARRIVAL, FAMILY, CANCELLED, DISCHARGE = "er-arrival", "er-arrival-family", "er-cancelled", "er-discharge"
KINDS = (ARRIVAL, FAMILY, CANCELLED, DISCHARGE)
KIND_DISPLAY = {ARRIVAL: "Arrivée à l'urgence", FAMILY: "Arrivée à l'urgence (famille)",
                CANCELLED: "Inscription annulée", DISCHARGE: "Départ"}
ROLE_DISPLAY = {"case-manager": "Gestionnaire de cas", "family-doctor": "Médecin de famille",
                "pharmacist": "Pharmacien communautaire", "addiction-worker": "Intervenant en dépendance",
                "community-organisation": "Organisme communautaire", "clsc-program": "Programme du CLSC",
                "other-member": "Autre membre"}

# Encounter states that are not a visit (the register ignores them).
NOT_A_VISIT = frozenset({"cancelled", "entered-in-error"})
EMERGENCY = "EMER"
INPATIENT = frozenset({"IMP", "ACUTE", "NONAC"})


def coding(code: str, display: str = "", system: str = CODESYSTEM) -> JSON:
    """A Coding of our CodeSystem (or of ``system``)."""
    out: JSON = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(code: str, display: str = "", system: str = CODESYSTEM) -> JSON:
    """A CodeableConcept with one Coding."""
    return {"coding": [coding(code, display, system)]}


def program_concept() -> JSON:
    return concept(PROGRAM, "Défi Santé")


def has_code(concepts: Any, code: str, system: str = CODESYSTEM) -> bool:
    """True when a CodeableConcept (or a list of them) carries ``system|code``."""
    items = concepts if isinstance(concepts, list) else [concepts]
    for item in items:
        for c in (item or {}).get("coding") or [] if isinstance(item, dict) else []:
            if isinstance(c, dict) and c.get("system") == system and c.get("code") == code:
                return True
    return False


# -- deterministic ids (mappings.stable_id): a repeated operation writes the same resources -------
def flag_id(patient_id: str) -> str:
    return stable_id("Flag", PROGRAM, patient_id)


def careplan_id(patient_id: str) -> str:
    return stable_id("CarePlan", PROGRAM, patient_id)


def careteam_id(patient_id: str) -> str:
    return stable_id("CareTeam", PROGRAM, patient_id)


def consent_id(patient_id: str) -> str:
    return stable_id("Consent", PROGRAM, patient_id)


def goal_id(patient_id: str, text: str) -> str:
    return stable_id("Goal", PROGRAM, patient_id, text)


def communication_id(encounter_id: str, kind: str) -> str:
    return stable_id("Communication", PROGRAM, kind, encounter_id)


def ref_id(reference: Any, rtype: str | None = None) -> str | None:
    """The id of a literal reference ``Type/id`` (of type ``rtype`` when given), else None."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str) or "/" not in text:
        return None
    head, _, rid = text.rstrip("/").rpartition("/")
    kind = head.rpartition("/")[2]
    if rtype is not None and kind != rtype:
        return None
    return rid or None

"""DG1 -> Condition (encounter-diagnosis), linked from Encounter.diagnosis.

IG rows: segments/DG1--Condition.csv, segments/DG1--Encounter.csv, vocab/DiagnosisType.csv. DG1-21 =
D (deleted): verificationStatus entered-in-error, and not listed in Encounter.diagnosis.
Diagnosis codes keep their coding system: I10CA (ICD-10-CA) ->
https://fhir.infoway-inforoute.ca/CodeSystem/icd10ca (codemaps/coding-systems.json).
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Segment
from mappings.codemaps import codemap
from mappings.datatypes.entities import xcn_to_practitioner
from mappings.datatypes.primitives import value
from mappings.ids import ref_to, stable_id
from mappings.segments.common import Env, cwe

JSON = dict[str, Any]
_CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                         "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}


def dg1_to_condition(seg: Segment, env: Env, patient_id: str, encounter_id: str | None,
                     position: int, record_id: str | None = None) -> list[JSON]:
    """DG1 -> [Condition, Practitioner?]: code DG1-3 (text DG1-4), onsetDateTime DG1-5, recordedDate
    DG1-19, asserter DG1-16, verificationStatus DG1-21 (D -> entered-in-error, diagnosis-action map),
    category encounter-diagnosis, subject, encounter. Id: encounter id (else
    the site record id ``record_id``, else the Patient id) + DG1-1 set id (else position) + code.
    [] when DG1-3 and DG1-4 are both empty."""
    code = cwe(seg, 3)
    description = value(seg.get(4))
    if code is None and not description:
        return []
    if description:
        code = {**(code or {}), "text": description}
    key = value(seg.get(3, 1)) or description
    set_id = value(seg.get(1)) or str(position)
    condition: JSON = {"resourceType": "Condition",
                       "id": stable_id("Condition", encounter_id or f"patient:{record_id or patient_id}", set_id, key),
                       "category": [_CATEGORY], "code": code,
                       "subject": {"reference": f"Patient/{patient_id}"}}
    if encounter_id is not None:
        condition["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    action = codemap("diagnosis-action").concept(value(seg.get(21)))
    if action is not None:  # DG1-21 D (delete): entered-in-error (no clinicalStatus then: FHIR con-5)
        condition["verificationStatus"] = action
    onset = env.time(seg, 5)
    if onset:
        condition["onsetDateTime"] = onset
    recorded = env.time(seg, 19)
    if recorded:
        condition["recordedDate"] = recorded
    out = [condition]
    rep = seg.rep(16)
    doctor = xcn_to_practitioner(rep, env.systems, env.site) if rep is not None else None
    if doctor is not None:
        condition["asserter"] = ref_to(doctor)
        out.append(doctor)
    return out


def listed_in_diagnosis(condition: JSON) -> bool:
    """Whether a Condition belongs in Encounter.diagnosis: not when DG1-21 deleted it (entered-in-error)."""
    status = condition.get("verificationStatus", {}).get("coding", [{}])[0].get("code")
    return bool(status != "entered-in-error")


def encounter_diagnosis(seg: Segment, condition: JSON) -> JSON:
    """Encounter.diagnosis entry: condition, use DG1-6 (diagnosis-type map), rank DG1-15."""
    entry: JSON = {"condition": ref_to(condition)}
    use = codemap("diagnosis-type").concept(value(seg.get(6)))
    if use is not None:
        entry["use"] = use
    rank = value(seg.get(15))
    if rank.isdigit() and 0 < int(rank) < 1000:
        entry["rank"] = int(rank)
    return entry

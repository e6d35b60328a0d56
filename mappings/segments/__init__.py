"""Layer 2: segment builders (one IG segment map each)."""

from mappings.segments.common import Env
from mappings.segments.condition import dg1_to_condition, encounter_diagnosis, listed_in_diagnosis
from mappings.segments.encounter import encounter_status, pv1_to_encounter, pv2_to_encounter
from mappings.segments.merge import mrg_to_retired_patient
from mappings.segments.patient import (
    link_general_practitioners,
    patient_id,
    patient_key,
    pd1_to_general_practitioners,
    pid_to_patient,
    record_id,
    record_key,
)
from mappings.segments.provenance import meta_source, msh_to_provenance
from mappings.segments.related import nk1_to_contact_organization, nk1_to_related_person

__all__ = [
    "Env", "dg1_to_condition", "encounter_diagnosis", "encounter_status", "link_general_practitioners",
    "listed_in_diagnosis", "meta_source", "mrg_to_retired_patient", "msh_to_provenance",
    "nk1_to_contact_organization", "nk1_to_related_person", "patient_id",
    "patient_key", "pd1_to_general_practitioners", "pid_to_patient", "pv1_to_encounter", "pv2_to_encounter",
    "record_id", "record_key",
]

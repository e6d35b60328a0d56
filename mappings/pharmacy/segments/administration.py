"""RXA (+ RXR, the group's ORC/RXE) -> MedicationAdministration (RAS^O17).

IG rows: segments/ORC--MedicationAdministration.csv (ORC-12 -> performer, the ordering provider);
RXA has only an Immunization map in the IG snapshot (segments/RXA--Immunization.csv), whose
field meanings we follow: RXA-3/4 -> effective[x], RXA-5 -> medication, RXA-6/7 -> dose, RXA-9 ->
note, RXA-10 -> performer, RXA-18 -> statusReason, RXA-19 -> reasonCode, RXA-20 completion status
(codemaps/completion-status.json) and RXA-21 action code D -> entered-in-error.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import MapError
from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.entities import xcn_to_practitioner
from mappings.datatypes.identifiers import identifier_key
from mappings.datatypes.primitives import value
from mappings.ids import ref_to, stable_id
from mappings.pharmacy.codemaps import concept_map
from mappings.pharmacy.datatypes import cwe_to_drug, field_quantity
from mappings.pharmacy.segments.request import Group, concepts
from mappings.segments.common import Env

JSON = dict[str, Any]


def rxa_administrator(seg: Segment, env: Env) -> JSON | None:
    """RXA-10 administering provider (XCN) -> Practitioner."""
    for rep in seg.reps(10):
        found = xcn_to_practitioner(rep, env.systems, env.site)
        if found is not None:
            return found
    return None


def rxa_status(seg: Segment) -> str:
    """RXA-21 D (delete) -> entered-in-error; else RXA-20 by codemaps/completion-status.json."""
    if value(seg.get(21)).upper() == "D":
        return "entered-in-error"
    target = concept_map("completion-status").get(value(seg.get(20)).upper())
    return target.code if target is not None else "completed"


def rxa_to_medication_administration(seg: Segment, env: Env, group: Group, route: JSON, index: int,
                                     performer: JSON | None) -> JSON:
    """RXA -> MedicationAdministration (module doc); MapError 101 at RXA-3 without a start time."""
    drug = cwe_to_drug(seg.rep(5), env.where(seg, 5))
    start, end = env.time(seg, 3), env.time(seg, 4)
    if not start:
        raise MapError("date/time of administration missing", hl7_code="101", location=env.where(seg, 3))
    give, admin = value(seg.get(1)), value(seg.get(2))
    key = (f"{identifier_key(group.rx_key)}|{give}|{admin}" if group.rx_key is not None and (give or admin)
           else f"{group.fallback}|{index}")
    res: JSON = {"resourceType": "MedicationAdministration", "id": stable_id("MedicationAdministration", key),
                 "status": rxa_status(seg)}
    reasons = concepts(seg, 18)
    if reasons:
        res["statusReason"] = reasons
    res["medicationCodeableConcept"] = drug.concept
    res["subject"] = group.patient
    if end and end != start:
        res["effectivePeriod"] = {"start": start, "end": end}
    else:
        res["effectiveDateTime"] = start
    if performer is not None:
        res["performer"] = [{"actor": ref_to(performer)}]
    indications = concepts(seg, 19)
    if indications:
        res["reasonCode"] = indications
    if group.request is not None:
        res["request"] = ref_to(group.request)
    notes = [t for t in (value(r.get(2)) or value(r.get(1)) for r in seg.reps(9)) if t]
    if notes:
        res["note"] = [{"text": t} for t in notes]
    dose: JSON = dict(route)
    amount = field_quantity(seg.get(6), seg.rep(7), env.where(seg, 6))
    if amount is not None:
        dose["dose"] = amount
    if dose:
        res["dosage"] = dose
    return res

"""RXD (+ its RXR, the group's ORC/RXE/TQ1) -> MedicationDispense; RXD-10 -> the pharmacist.

No IG row exists for RXD; we follow the Microsoft converter's RXD conventions where they agree with
FHIR R4 (RXD-2 medication, RXD-3 whenHandedOver, RXD-4/5 quantity, RXD-7 the prescription, RXD-9
note, RXD-10 performer, RXD-33 type v2-0484) and choose the rest (README): status completed (not
``unknown``), authorizingPrescription a literal reference to the order's MedicationRequest id, the
pharmacy as a second performer, RXD-11 substitution, and daysSupply:

1. TQ1-6 service duration of the group (in days), else
2. RXD-4 dispensed amount / RXD-12 total daily dose (units equal or absent), else
3. RXD-4 / (the order's dose x doses per day from its timing), units equal or absent;
   none of these: no daysSupply (the profile then assumes the default of profile-rules.json).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import MapError
from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.entities import xcn_to_practitioner
from mappings.datatypes.identifiers import identifier_key
from mappings.datatypes.primitives import value
from mappings.ids import ref_to, stable_id
from mappings.pharmacy.codemaps import concept_map, time_unit
from mappings.pharmacy.datatypes import cq_to_quantity, cwe_to_drug, field_quantity, quantity
from mappings.pharmacy.segments.request import Group, dosage, prescription_identifier
from mappings.segments.common import Env, cwe

JSON = dict[str, Any]
V2_0484 = "http://terminology.hl7.org/CodeSystem/v2-0484"


def _units(quantity_json: JSON, *sent: str) -> set[str]:
    """Every name a quantity's unit goes by (unit, code, and the CWE-1/CWE-2 as sent), lower-cased."""
    names = (quantity_json.get("unit"), quantity_json.get("code"), *sent)
    return {str(n).strip().lower() for n in names if n and str(n).strip()}


def _same_unit(a: set[str], b: set[str]) -> bool:
    return not a or not b or bool(a & b)


def _per_day(dose_json: JSON) -> JSON | None:
    """Amount per day of a Dosage: its doseQuantity x frequency / period (in days)."""
    rates = dose_json.get("doseAndRate") or [{}]
    dose = rates[0].get("doseQuantity")
    repeat = (dose_json.get("timing") or {}).get("repeat") or {}
    unit = time_unit(str(repeat.get("periodUnit", "")))
    if dose is None or not repeat.get("frequency") or not repeat.get("period") or unit is None:
        return None
    per_day = float(dose["value"]) * float(repeat["frequency"]) / (float(repeat["period"]) * unit[1])
    return {**dose, "value": per_day}


def days_supply(seg: Segment, amount: JSON | None, daily: JSON | None, group: Group) -> float | None:
    """Days' supply by the rules of the module docstring; None when unknown."""
    if group.schedule.supply_days:
        return group.schedule.supply_days
    if amount is None:
        return None
    amount_units = _units(amount, seg.get(5, 1), seg.get(5, 2))
    candidates: list[tuple[JSON | None, set[str]]] = []
    if daily is not None:
        candidates.append((daily, _units(daily, seg.get(12, 2, 1), seg.get(12, 2, 2))))
    if group.request is not None:
        per_day = _per_day((group.request.get("dosageInstruction") or [{}])[0])
        candidates.append((per_day, _units(per_day or {})))
    for per_day, units in candidates:
        if per_day is not None and float(per_day["value"]) > 0 and _same_unit(amount_units, units):
            return float(amount["value"]) / float(per_day["value"])
    return None


def _authorizing(group: Group, rx: JSON | None) -> JSON | None:
    """A literal reference to the MedicationRequest of the dispense's order: the id a
    MedicationRequest of that order gets (Group.request_id: the same prescription key, RXE-15 / ORC-3
    / RXD-7 / ORC-2, in an RDE as in an RDS), whether or not this message builds it; an RXD naming
    another prescription (RXD-7) than its group refers to that prescription's request. When the
    request is not in this message the prescription number rides along as the identifier."""
    if rx is not None and group.rx_key is not None and identifier_key(rx) != identifier_key(group.rx_key):
        return {"reference": f"MedicationRequest/{stable_id('MedicationRequest', identifier_key(rx))}",
                "identifier": rx}
    if group.request is not None:
        return ref_to(group.request)
    if group.rx_key is None:
        return None
    return {"reference": f"MedicationRequest/{group.request_id()}", "identifier": group.rx_key}


def rxd_pharmacist(seg: Segment, env: Env) -> JSON | None:
    """RXD-10 dispensing provider (XCN; an OPQ licence number when XCN-9 is OPQ) -> Practitioner."""
    for rep in seg.reps(10):
        found = xcn_to_practitioner(rep, env.systems, env.site)
        if found is not None:
            return found
    return None


def rxd_to_medication_dispense(seg: Segment, env: Env, group: Group, route: JSON, index: int,
                               pharmacist: JSON | None) -> JSON:
    """RXD -> MedicationDispense (module doc). ``route``: the RXR after this RXD (else the group's);
    ``index``: position of the RXD in its group (ids of dispenses without prescription number)."""
    drug = cwe_to_drug(seg.rep(2), env.where(seg, 2))
    if group.drug is None:
        group.drug = drug
    handed = env.time(seg, 3)
    if not handed:
        raise MapError("date/time dispensed missing", hl7_code="101", location=env.where(seg, 3))
    number = value(seg.get(7))
    rx = prescription_identifier(number, env.site) if number else group.rx_key
    if group.rx_key is None and rx is not None:
        group.rx_key = rx
    fill = value(seg.get(1)) or value(seg.get(3, 1))
    key = f"{identifier_key(rx)}|{fill}" if rx is not None else f"{group.fallback}|{index}"
    status = concept_map("dispense-status").get(group.order.status)
    disp: JSON = {"resourceType": "MedicationDispense", "id": stable_id("MedicationDispense", key),
                  "status": status.code if status is not None else "completed",
                  "medicationCodeableConcept": drug.concept, "subject": group.patient}
    performers = [{"actor": ref_to(pharmacist)}] if pharmacist is not None else []
    performers.append({"actor": group.pharmacy})
    disp["performer"] = performers
    authorizing = _authorizing(group, rx)
    if authorizing is not None:
        disp["authorizingPrescription"] = [authorizing]
    kind = cwe(seg, 33, V2_0484)
    if kind is not None:
        disp["type"] = kind
    amount = field_quantity(seg.get(4), seg.rep(5), env.where(seg, 4))
    if amount is not None:
        disp["quantity"] = amount
    daily = cq_to_quantity(seg.rep(12), env.where(seg, 12))
    days = days_supply(seg, amount, daily, group)
    if days is not None and days > 0:
        rounded = round(days, 1)
        disp["daysSupply"] = quantity(int(rounded) if rounded.is_integer() else rounded, "d", "d", "UCUM")
    disp["whenHandedOver"] = handed
    notes = [t for t in (value(r.get(2)) or value(r.get(1)) for r in seg.reps(9)) if t]
    if notes:
        disp["note"] = [{"text": t} for t in notes]
    dose = dosage(None, env, group)
    dose.update(route)
    if daily is not None:
        dose["maxDosePerPeriod"] = {"numerator": daily, "denominator": {"value": 1, "unit": "d",
                                                                         "system": "http://unitsofmeasure.org",
                                                                         "code": "d"}}
    if dose:
        disp["dosageInstruction"] = [dose]
    substitution = concept_map("substitution-status").get(value(seg.get(11)).upper())
    if substitution is not None:
        disp["substitution"] = {"wasSubstituted": substitution.code != "N",
                                "type": {"coding": [substitution.coding()]}}
    return disp

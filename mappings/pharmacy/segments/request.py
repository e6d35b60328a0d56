"""RXE (+ ORC, TQ1, RXR) -> MedicationRequest, intent filler-order (the pharmacy's encoded order).

No IG row exists for RXE (the IG snapshot has only RXO); we follow the IG RXO--MedicationRequest and
TQ1/RXR rows where a field has the same meaning, and the Microsoft converter's RXE conventions where
the IG is silent: ORC-2 -> identifier PLAC, RXE-15 -> the prescription number, RXE-10/11 ->
dispenseRequest.quantity, RXE-12 -> numberOfRepeatsAllowed, RXE-39 -> initialFill.quantity,
RXE-9 -> substitution (table 0167, codemaps/substitution-allowed.json), RXE-27 -> reasonCode,
RXE-19 -> maxDosePerPeriod (per day), RXE-3/4/5 -> doseQuantity / doseRange, RXE-23/24 ->
rateQuantity, ORC-9 -> authoredOn.
Differences are listed in mappings/pharmacy/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.errors import MapError
from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.coded import cwe_to_codeable_concept
from mappings.datatypes.identifiers import identifier_key
from mappings.datatypes.primitives import value
from mappings.ids import stable_id
from mappings.pharmacy.codemaps import UCUM, concept_map
from mappings.pharmacy.datatypes import Drug, Schedule, cq_to_quantity, cwe_to_drug, field_quantity, nm, quantity
from mappings.pharmacy.datatypes.drugs import V2_0203, rx_system
from mappings.pharmacy.segments.order import Order
from mappings.segments.common import Env

JSON = dict[str, Any]
PER_DAY = {"value": 1, "unit": "d", "system": UCUM, "code": "d"}


@dataclass(slots=True)
class Group:
    """What the builders of one ORC group share: the order, the patient and pharmacy references, the
    prescription key (identifier of the pharmacy's prescription number), timing and route."""

    index: int
    order: Order
    patient: JSON
    pharmacy: JSON
    fallback: str  # sender + MSH-10 + group index: ids of a group without prescription number
    rx_key: JSON | None = None
    schedule: Schedule = field(default_factory=Schedule)
    route: JSON = field(default_factory=dict)
    request: JSON | None = None
    drug: Drug | None = None

    def request_id(self) -> str:
        key = identifier_key(self.rx_key) if self.rx_key is not None else self.fallback
        return stable_id("MedicationRequest", key)


def prescription_identifier(number: str, site: str) -> JSON:
    """The pharmacy's prescription number (RXE-15, RXD-7): type FILL, system urn:pivot:rx:<site>."""
    return {"type": {"coding": [{"system": V2_0203, "code": "FILL"}], "text": "prescription number"},
            "system": rx_system(site), "value": number}


def concepts(seg: Segment, field_no: int) -> list[JSON]:
    """Every repetition of a CWE field as a CodeableConcept (empty ones left out)."""
    return [c for c in (cwe_to_codeable_concept(r) for r in seg.reps(field_no)) if c is not None]


def _unsigned(seg: Segment, env: Env, field_no: int) -> int | None:
    number = nm(seg.get(field_no), env.where(seg, field_no))
    if number is None:
        return None
    if not isinstance(number, int) or number < 0:
        raise MapError("value is not a whole number", hl7_code="102", location=env.where(seg, field_no))
    return number


def dosage(seg: Segment | None, env: Env, group: Group) -> JSON:
    """One Dosage from the group's schedule and route, and (for RXE) the give amount, rate,
    instructions and total daily dose."""
    sched = group.schedule
    out: JSON = {}
    if sched.text:
        out["text"] = sched.text
    extra: list[JSON] = []
    patient_text: list[str] = []
    if seg is not None:
        for rep in seg.reps(7):  # RXE-7: coded instructions, or the sig as text (CWE-2 only)
            concept = cwe_to_codeable_concept(rep)
            if concept is not None and value(rep.get(1)):
                extra.append(concept)
            elif concept is not None:
                patient_text.append(str(concept["text"]))
    if sched.condition:
        extra.append({"text": sched.condition})
    if extra:
        out["additionalInstruction"] = extra
    if patient_text:
        out["patientInstruction"] = "; ".join(patient_text)
    if sched.timing:
        out["timing"] = sched.timing
    if sched.as_needed:
        out["asNeededBoolean"] = True
    out.update(group.route)
    dose_rate = _dose_and_rate(seg, env, sched)
    if dose_rate:
        out["doseAndRate"] = [dose_rate]
    if seg is not None:
        daily = cq_to_quantity(seg.rep(19), env.where(seg, 19))
        if daily is not None:
            out["maxDosePerPeriod"] = {"numerator": daily, "denominator": dict(PER_DAY)}
    return out


def _dose_and_rate(seg: Segment | None, env: Env, sched: Schedule) -> JSON:
    out: JSON = {}
    if seg is not None:
        unit = seg.rep(5)
        low = field_quantity(seg.get(3), unit, env.where(seg, 3))
        high = field_quantity(seg.get(4), unit, env.where(seg, 4))
        if low is not None and high is not None and high != low:
            out["doseRange"] = {"low": low, "high": high}
        elif low is not None:
            out["doseQuantity"] = low
        rate = field_quantity(seg.get(23), seg.rep(24), env.where(seg, 23))
        if rate is not None:
            out["rateQuantity"] = rate
    if "doseQuantity" not in out and "doseRange" not in out and sched.dose is not None:
        out["doseQuantity"] = sched.dose
    return out


def rxe_to_medication_request(seg: Segment, env: Env, group: Group) -> JSON:
    """RXE -> MedicationRequest (module doc). Sets ``group.drug`` and ``group.request``."""
    drug = cwe_to_drug(seg.rep(2), env.where(seg, 2))
    group.drug = drug
    order = group.order
    identifiers = list(order.identifiers)
    number = value(seg.get(15))
    if number:
        rx = prescription_identifier(number, env.site)
        if all(identifier_key(i) != identifier_key(rx) for i in identifiers):
            identifiers.append(rx)
    req: JSON = {"resourceType": "MedicationRequest", "id": group.request_id()}
    if identifiers:
        req["identifier"] = identifiers
    req["status"] = order.status
    if order.reason is not None:
        req["statusReason"] = order.reason
    req["intent"] = "filler-order"
    if group.schedule.priority:
        req["priority"] = group.schedule.priority
    req["medicationCodeableConcept"] = drug.concept
    req["subject"] = group.patient
    authored = env.time(seg, 32) or ("" if order.stops else order.event_time)
    if authored:
        req["authoredOn"] = authored
    if order.prescriber is not None:
        req["requester"] = {"reference": f"Practitioner/{order.prescriber['id']}"}
    reasons = concepts(seg, 27)
    if reasons:
        req["reasonCode"] = reasons
    dose = dosage(seg, env, group)
    if dose:
        req["dosageInstruction"] = [dose]
    req["dispenseRequest"] = _dispense_request(seg, env, group)
    substitution = concept_map("substitution-allowed").concept(value(seg.get(9)))  # table 0167
    if substitution is not None:
        req["substitution"] = {"allowedCodeableConcept": substitution}
    group.request = req
    return req


def _dispense_request(seg: Segment, env: Env, group: Group) -> JSON:
    out: JSON = {}
    if group.order.stops and group.order.stop_time:
        out["validityPeriod"] = {"end": group.order.stop_time}
    initial = field_quantity(seg.get(39), seg.rep(11), env.where(seg, 39))
    if initial is not None:
        out["initialFill"] = {"quantity": initial}
    amount = field_quantity(seg.get(10), seg.rep(11), env.where(seg, 10))
    if amount is not None:
        out["quantity"] = amount
    refills = _unsigned(seg, env, 12)
    if refills is not None:
        out["numberOfRepeatsAllowed"] = refills
    days = group.schedule.supply_days
    if days is not None and days > 0:
        out["expectedSupplyDuration"] = quantity(_round(days), "d", "d", "UCUM")
    out["performer"] = group.pharmacy
    return out


def _round(days: float) -> int | float:
    rounded = round(days, 1)
    return int(rounded) if float(rounded).is_integer() else rounded

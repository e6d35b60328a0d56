"""PV1 (+ PV2) -> Encounter, with its Location and Practitioner resources.

IG rows: segments/PV1--Encounter.csv, segments/PV2--Encounter.csv, vocab/PatientClass--EncounterClass.csv,
vocab/PatientClass--EncounterStatus.csv, vocab/Event--EncounterStatus.csv.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.errors import MapWarning
from gateway.hl7v2.tokenizer import Segment
from mappings.codemaps import codemap
from mappings.datatypes.entities import pl_to_location, xcn_to_practitioner
from mappings.datatypes.identifiers import cx_to_identifier, identifier_key
from mappings.datatypes.primitives import value
from mappings.ids import ref_to, stable_id
from mappings.segments.common import Env, cwe

JSON = dict[str, Any]
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))
_V2 = "http://terminology.hl7.org/CodeSystem/v2-"
_ENDABLE = frozenset({"in-progress", "planned", "arrived", "triaged", "onleave"})  # PV1-45 valued -> finished
_ARRIVAL = "http://hl7.org/fhir/StructureDefinition/encounter-modeOfArrival"
_CLASSIFICATION = "http://hl7.org/fhir/StructureDefinition/subject-locationClassification"
_TEMPORARY = {"url": _CLASSIFICATION, "valueCodeableConcept": {"coding": [
    {"system": "http://hl7.org/fhir/subject-locationClassification", "code": "temporary", "display": "Temporary"}]}}


def encounter_status(trigger: str, pv1: Segment, ended: bool | None = None) -> str:
    """PV1-45 valued (``ended``: the end kept, default PV1-45 valued) -> finished, on any trigger
    whose own status is in-progress or planned (IG PV1-45 row: an A01/A04 that already carries the
    discharge is finished); else the status by trigger (event-encounter-status map: A03 finished,
    A11 cancelled…); for other triggers (A08…) by PV1-2 (patient-class-status map)."""
    if ended is None:
        ended = bool(value(pv1.get(45, 1)))
    by_event = codemap("event-encounter-status").get(trigger)
    if by_event is not None:
        return "finished" if ended and by_event.code in _ENDABLE else by_event.code
    if ended:
        return "finished"
    target = codemap("patient-class-status").get(value(pv1.get(2)))
    return target.code if target is not None else "unknown"


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if "T" in text else None
    except ValueError:
        return None


def ends_before_start(start: str, end: str) -> bool:
    """Whether ``end`` is certainly before ``start`` (FHIR per-1): instants compared when both have a
    time, else the dates over their common precision (YYYY, YYYY-MM, YYYY-MM-DD)."""
    if not start or not end:
        return False
    s, e = _instant(start), _instant(end)
    if s is not None and e is not None:
        return e < s
    n = min(len(start[:10]), len(end[:10]))
    return end[:n] < start[:n]


def _period(seg: Segment, env: Env, event_time: str, period_rule: str) -> tuple[str, str]:
    """(start, end): PV1-44/45, else the event time per ``period_rule``; an end before the start is
    dropped (never stored: FHIR per-1) with a warning at PV1-45 (ACK ERR severity W)."""
    start, end = env.time(seg, 44), env.time(seg, 45)
    if not start and period_rule == "start":
        start = event_time
    if not end and period_rule == "end":
        end = event_time
    if period_rule == "clear-end":
        end = ""
    if ends_before_start(start, end):
        env.warnings.append(MapWarning("discharge date/time before admit date/time: end dropped",
                                       location=env.where(seg, 45)))
        end = ""
    return start, end


def encounter_id(identifier: JSON | None, patient_id: str, when: str) -> str:
    """Encounter id from the visit number (PV1-19 system|value), else ``patient_id`` (the caller
    passes the site record id) + start time text."""
    if identifier is not None:
        return stable_id("Encounter", identifier_key(identifier))
    return stable_id("Encounter", "patient", patient_id, when)


def pv1_to_encounter(seg: Segment, env: Env, patient_id: str, event_time: str, period_rule: str,
                     record_id: str | None = None) -> list[JSON]:
    """PV1 -> [Encounter, Location…, Practitioner…].

    class PV1-2 (patient-class map, unmapped -> v3-NullFlavor UNK); status (encounter_status);
    identifier PV1-19 (type VN); type PV1-4; serviceType PV1-10; location PV1-3 (active, completed
    when finished), PV1-11 (temporary location: same status, extension subject-locationClassification
    temporary) and PV1-6 (prior, completed); participant PV1-7 ATND / PV1-8 REF / PV1-9 CON /
    PV1-17 ADM; hospitalization admitSource PV1-14, dischargeDisposition PV1-36; period PV1-44/45,
    else ``event_time`` (EVN-6/EVN-2, already converted) as start or end per ``period_rule``
    ("start", "end", "clear-end" or ""); an end before the start is dropped with a warning
    (``env.warnings``), and PV1-45 kept makes the visit finished whatever the trigger (A01/A04
    too). Without PV1-19 the id is the site record id (``record_id``, else the Patient id) + PV1-44
    (else ``event_time``).

    Cancels are mapped as what they leave (the identity resolver applies them onto the stored
    Encounter as reversals): A12 maps only PV1-3, the location the patient is back to (HL7 v2.5
    3.3.12: "PV1-3 must show the location of the patient prior to the original transfer"; PV1-6
    then names the cancelled destination, never occupied, so it is not listed as ``completed``);
    A13 clears ``period.end`` and maps no discharge disposition (PV1-36).
    """
    start, end = _period(seg, env, event_time, period_rule)
    status = encounter_status(env.trigger, seg, bool(end) and bool(value(seg.get(45, 1))))
    visit_rep = seg.rep(19)
    visit = (cx_to_identifier(visit_rep, env.systems, env.site, env.zone, env.where(seg, 19), visit=True, nam=False)
             if visit_rep is not None else None)
    if visit is not None and "type" not in visit:
        visit = {"type": {"coding": [{"system": _V2 + "0203", "code": "VN"}]}, **visit}
    klass = codemap("patient-class").get(value(seg.get(2)))
    encounter: JSON = {"resourceType": "Encounter",
                       "id": encounter_id(visit, record_id or patient_id, value(seg.get(44, 1)) or event_time)}
    if visit is not None:
        encounter["identifier"] = [visit]
    encounter["status"] = status
    encounter["class"] = klass.coding() if klass is not None else {}
    extra: list[JSON] = []
    admission_type = cwe(seg, 4, _V2 + "0007")
    if admission_type is not None:
        encounter["type"] = [admission_type]
    service = cwe(seg, 10, _V2 + "0069")
    if service is not None:
        encounter["serviceType"] = service
    encounter["subject"] = {"reference": f"Patient/{patient_id}"}
    participants = _participants(seg, env, extra)
    if participants:
        encounter["participant"] = participants
    if start or end:
        encounter["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    hospitalization = _hospitalization(seg, discharge=env.trigger != "A13")
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    locations = _locations(seg, env, status, extra, prior=env.trigger != "A12")
    if locations:
        encounter["location"] = locations
    return [encounter, *extra]


def _participants(seg: Segment, env: Env, extra: list[JSON]) -> list[JSON]:
    out: list[JSON] = []
    for field, code, display in _PARTICIPANTS:
        for rep in seg.reps(field):
            doctor = xcn_to_practitioner(rep, env.systems, env.site)
            if doctor is None:
                continue
            extra.append(doctor)
            out.append({"type": [{"coding": [{"system": _PARTICIPATION, "code": code, "display": display}]}],
                        "individual": ref_to(doctor)})
    return out


def _hospitalization(seg: Segment, *, discharge: bool) -> JSON:
    out: JSON = {}
    source = codemap("admit-source").concept(value(seg.get(14)))
    if source is not None:
        out["admitSource"] = source
    disposition = codemap("discharge-disposition").concept(value(seg.get(36))) if discharge else None
    if disposition is not None:
        out["dischargeDisposition"] = disposition
    return out


def _locations(seg: Segment, env: Env, status: str, extra: list[JSON], *, prior: bool) -> list[JSON]:
    out: list[JSON] = []
    current = "completed" if status in ("finished", "cancelled") else "planned" if status == "planned" else "active"
    fields = ((3, current), (11, current), (6, "completed")) if prior else ((3, current),)
    for field, loc_status in fields:
        rep = seg.rep(field)
        loc = pl_to_location(rep, env.site) if rep is not None else None
        if loc is not None:
            extra.append(loc)
            entry: JSON = {"location": ref_to(loc), "status": loc_status}
            if field == 11:  # PV1-11 temporary location (IG: subject-locationClassification temporary)
                entry = {"extension": [_TEMPORARY], **entry}
            out.append(entry)
    return out


def pv2_to_encounter(seg: Segment, encounter: JSON) -> None:
    """PV2-3 admit reason -> Encounter.reasonCode (CWE); PV2-25 visit priority -> priority
    (encounter-priority map, v3-ActPriority); PV2-38 mode of arrival -> extension
    encounter-modeOfArrival (valueCoding, mode-of-arrival map, v2-0430)."""
    reason = cwe(seg, 3)
    if reason is not None:
        encounter["reasonCode"] = [reason]
    priority = codemap("encounter-priority").concept(value(seg.get(25)))
    if priority is not None:
        encounter["priority"] = priority
    arrival = codemap("mode-of-arrival").get(value(seg.get(38)))
    if arrival is not None:
        others = [x for x in encounter.get("extension", []) if x.get("url") != _ARRIVAL]
        encounter["extension"] = [*others, {"url": _ARRIVAL, "valueCoding": arrival.coding()}]

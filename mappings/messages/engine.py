"""Layer 3: run a message map over one message and return validated resources.

Segments are read in order. PID opens a patient group (A40 may carry several PID/MRG groups);
PD1, NK1, PV1, PV2, DG1 and MRG attach to the current group. Segments the structure does not map
(IN1, AL1, OBX… and PV1/PV2 of A28/A31/A40) are reported in ``unmapped_segments``; Z-segments are
also kept verbatim on the Provenance. Output order: Patients, RelatedPersons, Organizations,
Practitioners, Locations, Encounters, Conditions, then the Provenance; one resource per id (the
first built wins). ``meta.source`` is set on every resource.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Location, MapError
from gateway.hl7v2.tokenizer import Message, Segment
from mappings.context import MapContext, MapResult
from mappings.datatypes.entities import sender_organization
from mappings.datatypes.primitives import value
from mappings.messages.tables import ALWAYS_READ, NO_ENCOUNTER, VISIT_NUMBER_REQUIRED, message_map
from mappings.pharmacy import is_pharmacy, map_pharmacy
from mappings.segments import (
    Env,
    dg1_to_condition,
    encounter_diagnosis,
    link_general_practitioners,
    listed_in_diagnosis,
    meta_source,
    mrg_to_retired_patient,
    msh_to_provenance,
    nk1_to_contact_organization,
    nk1_to_related_person,
    pd1_to_general_practitioners,
    pid_to_patient,
    pv1_to_encounter,
    pv2_to_encounter,
    record_id,
)
from mappings.segments.nulls import (
    DG1_CONDITION,
    NK1_PATIENT,
    NK1_RELATED,
    PD1_PATIENT,
    PID_PATIENT,
    PV1_ENCOUNTER,
    PV2_ENCOUNTER,
    FieldPaths,
    add_nulls,
)
from mappings.segments.provenance import event_instant
from mappings.structure import check_structure
from mappings.validation import validate_all

JSON = dict[str, Any]
_ORDER = ("Patient", "RelatedPerson", "Organization", "Practitioner", "PractitionerRole", "Location",
          "Encounter", "Condition")
# EVN time -> Encounter.period when PV1-44/45 are empty (trigger -> rule)
_PERIOD_RULES = {"A01": "start", "A04": "start", "A03": "end", "A13": "clear-end"}


@dataclass(slots=True)
class _Group:
    patient: JSON
    record: str  # the site record id (mappings.segments.patient.record_id): base of visit/NK1/DG1 ids
    encounter: JSON | None = None
    nk1_count: int = 0
    dg1_count: int = 0


@dataclass(slots=True)
class _Build:
    msg: Message
    env: Env
    event_time: str
    map_encounter: bool
    resources: list[JSON] = field(default_factory=list)
    group: _Group | None = None
    unmapped: list[str] = field(default_factory=list)
    nulls: dict[str, list[str]] = field(default_factory=dict)
    z_segments: list[Segment] = field(default_factory=list)

    def nulled(self, resource: JSON, seg: Segment, table: FieldPaths) -> None:
        """Record the fields of ``seg`` sent as ``""`` against ``resource`` (MapResult.nulls)."""
        add_nulls(self.nulls, resource, seg, table)

    def need_group(self, seg: Segment) -> _Group:
        if self.group is None:  # a PD1/PV1/… before any PID
            raise MapError(f"{seg.id} segment before the PID segment", hl7_code="100", location=Location("PID", 1))
        return self.group


def _pid(b: _Build, seg: Segment) -> None:
    patient = pid_to_patient(seg, b.env)
    b.group = _Group(patient, record_id(patient["identifier"]) or patient["id"])
    b.resources.append(patient)
    b.nulled(patient, seg, PID_PATIENT)


def _pd1(b: _Build, seg: Segment) -> None:
    group = b.need_group(seg)
    found = pd1_to_general_practitioners(seg, b.env)
    link_general_practitioners(group.patient, found)
    b.resources.extend(found)
    b.nulled(group.patient, seg, PD1_PATIENT)


def _nk1(b: _Build, seg: Segment) -> None:
    group = b.need_group(seg)
    group.nk1_count += 1
    person = nk1_to_related_person(seg, b.env, group.patient["id"], group.nk1_count, group.record)
    organization = nk1_to_contact_organization(seg, b.env)  # NK1-13: Patient.contact.organization
    if organization is not None:
        group.patient.setdefault("contact", []).append(organization[0])
        b.resources.append(organization[1])
    b.nulled(group.patient, seg, NK1_PATIENT)
    if person is not None:
        b.resources.append(person)
        b.nulled(person, seg, NK1_RELATED)


def _pv1(b: _Build, seg: Segment) -> None:
    group = b.need_group(seg)
    if not b.map_encounter or group.encounter is not None or (
            b.env.trigger in VISIT_NUMBER_REQUIRED and not value(seg.get(19, 1))):  # an update names no visit
        b.unmapped.append(seg.id)
        return
    built = pv1_to_encounter(seg, b.env, group.patient["id"], b.event_time, _PERIOD_RULES.get(b.env.trigger, ""),
                             group.record)
    group.encounter = built[0]
    b.resources.extend(built)
    b.nulled(built[0], seg, PV1_ENCOUNTER)


def _pv2(b: _Build, seg: Segment) -> None:
    group = b.need_group(seg)
    if group.encounter is None:
        b.unmapped.append(seg.id)
        return
    pv2_to_encounter(seg, group.encounter)
    b.nulled(group.encounter, seg, PV2_ENCOUNTER)


def _dg1(b: _Build, seg: Segment) -> None:
    group = b.need_group(seg)
    group.dg1_count += 1
    encounter = group.encounter
    built = dg1_to_condition(seg, b.env, group.patient["id"], encounter["id"] if encounter else None,
                             group.dg1_count, group.record)
    if built and encounter is not None and listed_in_diagnosis(built[0]):
        encounter.setdefault("diagnosis", []).append(encounter_diagnosis(seg, built[0]))
    b.resources.extend(built)
    if built:
        b.nulled(built[0], seg, DG1_CONDITION)


def _mrg(b: _Build, seg: Segment) -> None:
    group = b.need_group(seg)
    retired = mrg_to_retired_patient(seg, b.env, group.patient)
    if retired is not None:
        b.resources.append(retired)


_HANDLERS: dict[str, Callable[[_Build, Segment], None]] = {
    "PID": _pid, "PD1": _pd1, "NK1": _nk1, "PV1": _pv1, "PV2": _pv2, "DG1": _dg1, "MRG": _mrg,
}


def _event_time(msg: Message, env: Env) -> str:
    """EVN-6 (event occurred), else EVN-2 (recorded), as a dateTime; '' without EVN."""
    evn = msg.first("EVN")
    if evn is None:
        return ""
    return env.time(evn, 6) or env.time(evn, 2)


def _trigger(msg: Message) -> str:
    trigger = msg.trigger.strip().upper()
    if not trigger:
        evn = msg.first("EVN")
        trigger = value(evn.get(1)).upper() if evn is not None else ""
    return trigger


def _ordered(resources: list[JSON]) -> list[JSON]:
    seen: set[tuple[str, str]] = set()
    unique: list[JSON] = []
    for res in resources:
        key = (res["resourceType"], res["id"])
        if key not in seen:
            seen.add(key)
            unique.append(res)
    rank = {t: i for i, t in enumerate(_ORDER)}
    return sorted(unique, key=lambda r: rank.get(r["resourceType"], len(rank)))  # stable sort


def map_message(msg: Message, ctx: MapContext, *, structure_checked: bool = False) -> MapResult:
    """Map one supported message to validated FHIR R4 resources (a pure function of msg and ctx).

    Raises UnsupportedError (type/trigger), StructureError (100/101: a segment or field the
    structure requires, mappings/structure.py), MapError (100 missing PID, 101 missing required
    value, 102 unreadable date/time) or ValidateError. ``structure_checked``: the caller already ran
    :func:`check_required` with this profile (gateway/pipeline.py), so it is not run twice.
    """
    if is_pharmacy(msg):
        return map_pharmacy(msg, ctx, structure_checked=structure_checked)
    mmap = message_map(msg)
    trigger = _trigger(msg)
    if not structure_checked:
        check_structure(msg, mmap.structure, trigger, ctx.profile.relax)
    env = Env(msg=msg, zone=ctx.profile.zone, systems=ctx.systems, site=ctx.profile.site or msg.sending_facility,
              trigger=trigger)
    if msg.first("PID") is None:
        raise MapError("PID segment missing", hl7_code="100", location=Location("PID", 1))
    b = _Build(msg, env, _event_time(msg, env), trigger not in NO_ENCOUNTER)
    for seg in msg.segments[1:]:
        sid = seg.id
        if sid in mmap.segments:
            _HANDLERS[sid](b, seg)
        elif sid in ALWAYS_READ:
            continue
        else:
            if sid.startswith("Z"):
                b.z_segments.append(seg)
            b.unmapped.append(sid)
    sender = sender_organization(msg.sending_facility, value(msg.msh.get(4, 2)))
    for res in b.resources:
        if res["resourceType"] == "Encounter":
            res["serviceProvider"] = {"reference": f"Organization/{sender['id']}"}
    resources = _ordered([*b.resources, sender])
    resources.append(msh_to_provenance(msg, env, resources, sender, b.z_segments))
    source = meta_source(msg)
    resources = [{"resourceType": r["resourceType"], "id": r["id"], "meta": {"source": source}, **r}
                 for r in resources]
    validate_all(resources)
    patients = [r for r in resources if r["resourceType"] == "Patient" and r.get("active", True)]
    return MapResult(resources=resources, patient_id=patients[0]["id"] if patients else None,
                     unmapped_segments=list(dict.fromkeys(b.unmapped)), message_code=msg.message_code,
                     trigger=msg.trigger, sender=msg.sender, control_id=msg.control_id,
                     event_time=event_instant(msg, env), nulls=b.nulls, warnings=list(env.warnings))

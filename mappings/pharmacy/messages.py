"""Layer 3: RDS^O13, RDE^O11/O25 and RAS^O17 -> validated resources (a pure function of message and
configuration, like :func:`mappings.map_message`).

Segments are read in order. PID (the first) builds the Patient exactly as the ADT mapping does
(same NAM rule, same id), PD1 its general practitioners. ORC opens an order group; an RXE, RXD or RXA
met without an ORC opens one too (and a second RXE opens a new one). Within a group, a TQ1 or RXR
belongs to the last of ORC/RXO (the order), RXE (the encoded order), RXD (that dispense) or RXA (the
administrations) met before it. Which segments a structure maps, and the one it must carry (RXD, RXE,
RXA), is data: codemaps/messages.json. Everything else (RXO, RXC, NTE, AL1, OBX, FT1, PV1…) is listed
in ``unmapped_segments``; Z-segments are also kept verbatim on the Provenance. Output order: Patient,
Organizations, Practitioners, MedicationRequests, MedicationDispenses, MedicationAdministrations,
Provenance; one resource per id (the first built wins); ``meta.source`` on every resource.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Location, MapError, UnsupportedError
from gateway.hl7v2.tokenizer import Message, Segment
from mappings.config import IdentifierSystems
from mappings.context import MapContext, MapResult
from mappings.datatypes.entities import sender_organization
from mappings.datatypes.identifiers import NAM_SYSTEM, valid_nam
from mappings.datatypes.primitives import value
from mappings.ids import ref_to
from mappings.pharmacy.codemaps import Structure, default_authorities, messages
from mappings.pharmacy.datatypes import Schedule
from mappings.pharmacy.segments import (
    Group,
    Order,
    orc_to_order,
    prescription_identifier,
    profile_extension,
    rxa_administrator,
    rxa_to_medication_administration,
    rxd_pharmacist,
    rxd_to_medication_dispense,
    rxe_to_medication_request,
    rxr_to_route,
    tq1_to_schedule,
    tq_field_schedule,
    zpr_as_of,
)
from mappings.segments import (
    Env,
    link_general_practitioners,
    meta_source,
    msh_to_provenance,
    pd1_to_general_practitioners,
)
from mappings.segments.nulls import (
    PD1_PATIENT,
    PID_PATIENT,
    RXA_ADMINISTRATION,
    RXD_DISPENSE,
    RXE_REQUEST,
    add_nulls,
    explicit_nulls,
)
from mappings.segments.patient import pid_to_patient
from mappings.segments.provenance import event_instant, recorded
from mappings.structure import check_structure
from mappings.validation import validate_all

JSON = dict[str, Any]
_ORDER = ("Patient", "Organization", "Practitioner", "MedicationRequest", "MedicationDispense",
          "MedicationAdministration")

PHARMACY_TRIGGERS: dict[str, dict[str, str]] = messages()[0]
"""Supported pharmacy message codes -> trigger -> structure (codemaps/messages.json)."""


@dataclass(slots=True)
class _Raw:
    """The segments of one order group, as read."""

    orc: Segment | None = None
    order_tq1: Segment | None = None
    order_rxr: Segment | None = None
    rxe: Segment | None = None
    rxe_tq1: Segment | None = None
    rxe_rxr: Segment | None = None
    rxds: list[list[Segment | None]] = field(default_factory=list)  # [RXD, its RXR]
    rxas: list[Segment] = field(default_factory=list)
    rxa_rxr: Segment | None = None
    last: str = ""


def structure_of(msg: Message) -> Structure:
    """The structure of a supported pharmacy message; UnsupportedError 200 (MSH-9) / 201 (MSH-9.2)."""
    triggers, structures, _always = messages()
    by_trigger = triggers.get(msg.message_code.strip().upper())
    if by_trigger is None:
        raise UnsupportedError("unsupported message type", hl7_code="200", location=Location("MSH", 1, 9))
    name = by_trigger.get(msg.trigger.strip().upper())
    if name is None:
        raise UnsupportedError("unsupported event code", hl7_code="201", location=Location("MSH", 1, 9, 2))
    return structures[name]


def with_authorities(systems: IdentifierSystems) -> IdentifierSystems:
    """The configured systems plus our licence authorities (OPQ) the configuration does not name."""
    extra = {k: v for k, v in default_authorities().items() if k not in systems.systems}
    return IdentifierSystems({**systems.systems, **extra}, systems.visit_systems) if extra else systems


def _usable(patient: JSON, seg: Segment, env: Env) -> None:
    """At least a valid NAM or one identifier outside the NAM system (an invalid NAM alone is not)."""
    for ident in patient.get("identifier", []):
        if ident.get("system") != NAM_SYSTEM or valid_nam(str(ident.get("value", ""))):
            return
    raise MapError("no usable patient identifier in PID-3", hl7_code="101", location=env.where(seg, 3))


@dataclass(slots=True)
class _Reader:
    """Reads the segments after MSH into the patient, the order groups and the Z-segments."""

    structure: Structure
    always: frozenset[str]
    pid: Segment | None = None
    pd1: list[Segment] = field(default_factory=list)
    groups: list[_Raw] = field(default_factory=list)
    zpr: Segment | None = None
    z_segments: list[Segment] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def group(self, opens: str = "") -> _Raw:
        current = self.groups[-1] if self.groups else None
        busy = current is not None and (current.rxe is not None or current.rxds or current.rxas)
        if current is None or (opens == "RXE" and busy):
            current = _Raw()
            self.groups.append(current)
        return current

    def _mapped(self, sid: str) -> bool:
        """A segment the structure maps, where it can be read: the first PID, the others after it."""
        if sid == "PID":
            return self.pid is None
        return sid in self.structure.segments and self.pid is not None

    def read(self, seg: Segment) -> None:
        sid = seg.id
        if sid in self.always:
            return
        if sid.startswith("Z"):
            self.z_segments.append(seg)
        if not self._mapped(sid):
            if sid == "RXO" and self.pid is not None:
                self.group().last = "RXO"  # not mapped, but the RXR/TQ1 after it belong to the order
            self.unmapped.append(sid)
        elif not self._slot(seg):
            self.unmapped.append(sid)

    def _slot(self, seg: Segment) -> bool:
        sid = seg.id
        if sid == "PID":
            self.pid = seg
        elif sid == "PD1":
            self.pd1.append(seg)
        elif sid == "ZPR":
            self.zpr = self.zpr or seg
        elif sid == "ORC":
            self.groups.append(_Raw(orc=seg, last="ORC"))
        elif sid == "RXE":
            raw = self.group("RXE")
            raw.rxe, raw.last = seg, "RXE"
        elif sid == "RXD":
            raw = self.group()
            raw.rxds.append([seg, None])
            raw.last = "RXD"
        elif sid == "RXA":
            raw = self.group()
            raw.rxas.append(seg)
            raw.last = "RXA"
        elif sid in ("TQ1", "RXR"):
            return self._attach(seg)
        return True

    def _attach(self, seg: Segment) -> bool:
        raw = self.group()
        slot = {("TQ1", "ORC"): "order_tq1", ("TQ1", "RXO"): "order_tq1", ("TQ1", "RXE"): "rxe_tq1",
                ("RXR", "ORC"): "order_rxr", ("RXR", "RXO"): "order_rxr", ("RXR", "RXE"): "rxe_rxr",
                ("RXR", "RXA"): "rxa_rxr"}.get((seg.id, raw.last))
        if seg.id == "RXR" and raw.last == "RXD" and raw.rxds[-1][1] is None:
            raw.rxds[-1][1] = seg
            return True
        if slot is None or getattr(raw, slot) is not None:
            return False
        setattr(raw, slot, seg)
        return True


def _schedule(raw: _Raw, order: Order, env: Env) -> Schedule:
    """TQ1 after RXE, else TQ1 after ORC, else RXE-1 (TQ), else ORC-7 (TQ)."""
    for tq1 in (raw.rxe_tq1, raw.order_tq1):
        if tq1 is not None:
            return tq1_to_schedule(tq1, env)
    if raw.rxe is not None:
        found = tq_field_schedule(raw.rxe, 1, env)
        if found is not None:
            return found
    return order.schedule or Schedule()


def _rx_key(raw: _Raw, order: Order, env: Env) -> JSON | None:
    """The group's prescription key: RXE-15, else ORC-3 (FILL), else the first RXD-7, else ORC-2."""
    by_type = {i["type"]["coding"][0]["code"]: i for i in order.identifiers}
    rxe_number = value(raw.rxe.get(15)) if raw.rxe is not None else ""
    rxd = raw.rxds[0][0] if raw.rxds else None
    rxd_number = value(rxd.get(7)) if rxd is not None else ""
    if rxe_number:
        return prescription_identifier(rxe_number, env.site)
    if "FILL" in by_type:
        return {"system": by_type["FILL"]["system"], "value": by_type["FILL"]["value"]}
    if rxd_number:
        return prescription_identifier(rxd_number, env.site)
    if "PLAC" in by_type:
        return {"system": by_type["PLAC"]["system"], "value": by_type["PLAC"]["value"]}
    return None


def _build_group(raw: _Raw, index: int, msg: Message, env: Env, patient: JSON, sender: JSON,
                 stamp: str, nulls: dict[str, list[str]]) -> tuple[list[JSON], JSON]:
    """The resources of one group and its pharmacy (ORC-21, else the sender MSH-4); the fields sent
    as ``""`` go to ``nulls`` (MapResult.nulls)."""
    order = orc_to_order(raw.orc, env, stamp) if raw.orc is not None else Order()
    pharmacy = order.facility or sender
    out: list[JSON] = [pharmacy]
    if order.prescriber is not None:
        out.append(order.prescriber)
    group = Group(index=index, order=order, patient=ref_to(patient), pharmacy=ref_to(pharmacy),
                  fallback=f"{msg.sender}|{msg.control_id}|{index}", rx_key=_rx_key(raw, order, env),
                  schedule=_schedule(raw, order, env))
    rxr = raw.rxe_rxr or raw.order_rxr
    group.route = rxr_to_route(rxr) if rxr is not None else {}
    if raw.rxe is not None:
        out.append(rxe_to_medication_request(raw.rxe, env, group))
        add_nulls(nulls, out[-1], raw.rxe, RXE_REQUEST)
    for i, (rxd, rxd_rxr) in enumerate(raw.rxds):
        assert rxd is not None
        pharmacist = rxd_pharmacist(rxd, env)
        if pharmacist is not None:
            out.append(pharmacist)
        route = rxr_to_route(rxd_rxr) if rxd_rxr is not None else {}
        out.append(rxd_to_medication_dispense(rxd, env, group, route, i, pharmacist))
        add_nulls(nulls, out[-1], rxd, RXD_DISPENSE)
    admin_route = rxr_to_route(raw.rxa_rxr) if raw.rxa_rxr is not None else group.route
    for i, rxa in enumerate(raw.rxas):
        performer = rxa_administrator(rxa, env)
        if performer is not None:
            out.append(performer)
        out.append(rxa_to_medication_administration(rxa, env, group, admin_route, i, performer))
        add_nulls(nulls, out[-1], rxa, RXA_ADMINISTRATION)
    return out, pharmacy


def _ordered(resources: list[JSON]) -> list[JSON]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for res in resources:
        key = (res["resourceType"], res["id"])
        if key not in seen:
            seen.add(key)
            unique.append(res)
    rank = {t: i for i, t in enumerate(_ORDER)}
    return sorted(unique, key=lambda r: rank.get(r["resourceType"], len(rank)))


def map_pharmacy(msg: Message, ctx: MapContext, *, structure_checked: bool = False) -> MapResult:
    """Map one pharmacy message (RDS^O13, RDE^O11/O25, RAS^O17) to validated FHIR R4 resources.

    Raises UnsupportedError (200/201: not a supported pharmacy type/trigger), MapError (100: PID or
    the structure's RXD/RXE/RXA missing; 101: no usable patient identifier at PID-3, a required value
    missing such as RXD-2/RXD-3; 102: a number, date or time that cannot be read; 103: a malformed
    DIN) or ValidateError. Errors name segments and fields, never values. ``structure_checked``: the
    caller already checked the required structure (gateway/pipeline.py).
    """
    structure = structure_of(msg)
    if not structure_checked:
        check_structure(msg, structure.name, msg.trigger.strip().upper(), ctx.profile.relax)
    _triggers, _structures, always = messages()
    env = Env(msg=msg, zone=ctx.profile.zone, systems=with_authorities(ctx.systems),
              site=ctx.profile.site or msg.sending_facility, trigger=msg.trigger.strip().upper())
    reader = _Reader(structure, always)
    for seg in msg.segments[1:]:
        reader.read(seg)
    if reader.pid is None:
        raise MapError("PID segment missing", hl7_code="100", location=Location("PID", 1))
    patient = pid_to_patient(reader.pid, env)
    _usable(patient, reader.pid, env)
    stamp = recorded(msg, env)
    as_of = zpr_as_of(reader.zpr, env, stamp) if reader.zpr is not None else None
    has_required = any(s.id == structure.required for s in msg.segments)
    if not has_required and as_of is None:
        raise MapError(f"{structure.required} segment missing", hl7_code="100",
                       location=Location(structure.required, 1))
    sender = sender_organization(msg.sending_facility, value(msg.msh.get(4, 2)))
    resources: list[JSON] = [patient]
    for seg in reader.pd1:
        found = pd1_to_general_practitioners(seg, env)
        link_general_practitioners(patient, found)
        resources.extend(found)
    pharmacies: list[JSON] = []
    nulls = _patient_nulls(reader.pid, reader.pd1, patient)
    for i, raw in enumerate(reader.groups):
        built, pharmacy = _build_group(raw, i, msg, env, patient, sender, stamp, nulls)
        resources.extend(built)
        pharmacies.append(pharmacy)
    resources = _ordered([*resources, sender])
    prov = msh_to_provenance(msg, env, resources, sender, reader.z_segments)
    if as_of is not None:
        pharmacy = pharmacies[0] if pharmacies else sender
        prov["extension"] = [*prov.get("extension", []), profile_extension(as_of, ref_to(pharmacy))]
    resources.append(prov)
    source = meta_source(msg)
    resources = [{"resourceType": r["resourceType"], "id": r["id"], "meta": {"source": source}, **r}
                 for r in resources]
    validate_all(resources)
    return MapResult(resources=resources, patient_id=patient["id"],
                     unmapped_segments=list(dict.fromkeys(reader.unmapped)), message_code=msg.message_code,
                     trigger=msg.trigger, sender=msg.sender, control_id=msg.control_id,
                     event_time=event_instant(msg, env), nulls=nulls)


def _patient_nulls(pid: Segment, pd1: list[Segment], patient: JSON) -> dict[str, list[str]]:
    """PID/PD1 fields sent as ``""`` (MapResult.nulls; a pharmacy's only fill what no site said:
    gateway/identity/survivorship.py)."""
    paths = explicit_nulls(pid, PID_PATIENT) + [p for seg in pd1 for p in explicit_nulls(seg, PD1_PATIENT)]
    return {f"Patient/{patient['id']}": list(dict.fromkeys(paths))} if paths else {}

"""ORC -> the order header of a group; TQ1 -> Schedule; RXR -> Dosage route/site/method.

IG rows: segments/ORC--MedicationAdministration.csv (ORC-2 -> identifier PLAC, ORC-3 -> identifier
FILL, ORC-12 -> the ordering provider, XCN[Practitioner]) read for MedicationRequest;
segments/TQ1--MedicationRequest.csv; segments/RXR--MedicationRequest.csv (RXR-1 route via
vocab/RouteOfAdministration.csv, RXR-2 site, RXR-4 method). ORC-1 / ORC-5 -> status and ORC-21 ->
the pharmacy are our choices (mappings/pharmacy/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.entities import xcn_to_practitioner, xon_to_organization
from mappings.datatypes.primitives import dtm, value
from mappings.pharmacy.codemaps import concept_map, route_snomed
from mappings.pharmacy.datatypes import (
    Schedule,
    cq_to_duration,
    cq_to_quantity,
    ei_to_identifier,
    order_system,
    priority,
    repeat_pattern,
    rx_system,
    tm_to_time,
    tq_to_schedule,
)
from mappings.segments.common import Env, cwe

JSON = dict[str, Any]
STOP_STATUSES = frozenset({"stopped", "cancelled", "on-hold", "entered-in-error"})
"""MedicationRequest statuses that end the pharmacy's coverage of the drug (the profile)."""


@dataclass(slots=True)
class Order:
    """What the ORC of a group says (an empty Order when the group has no ORC)."""

    control: str = ""
    status: str = "active"
    stop_time: str = ""
    identifiers: list[JSON] = field(default_factory=list)
    event_time: str = ""
    reason: JSON | None = None
    prescriber: JSON | None = None
    facility: JSON | None = None
    schedule: Schedule | None = None

    @property
    def stops(self) -> bool:
        return self.status in STOP_STATUSES


def order_status(control: str, status: str) -> str:
    """ORC-5 (codemaps/order-status.json) when mapped, else ORC-1 (codemaps/order-control.json)."""
    target = concept_map("order-status").get(status) if status else None
    if target is None:
        target = concept_map("order-control").get(control)
    return target.code if target is not None else "active"


def orc_to_order(seg: Segment, env: Env, recorded: str) -> Order:
    """ORC -> Order: control ORC-1, status ORC-5/ORC-1, identifiers ORC-2 (PLAC) / ORC-3 (FILL; an
    ORC-3 without authority is the pharmacy's prescription number), event time ORC-9, stop time
    ORC-15 else ORC-9 else ``recorded`` (MSH-7) for a stop, reason ORC-16, prescriber ORC-12 (XCN,
    CMQ licence) and facility ORC-21 (XON). The schedule of ORC-7 (TQ) is the last resort timing."""
    control = value(seg.get(1)).upper()
    order = Order(control=control, status=order_status(control, value(seg.get(5)).upper()))
    placer = ei_to_identifier(seg.rep(2), env.systems, order_system(env.site), "PLAC")
    filler = ei_to_identifier(seg.rep(3), env.systems, rx_system(env.site), "FILL")
    order.identifiers = [i for i in (placer, filler) if i is not None]
    order.event_time = env.time(seg, 9)
    if order.stops:
        order.stop_time = env.time(seg, 15) or order.event_time or recorded
    order.reason = cwe(seg, 16)
    for rep in seg.reps(12):
        order.prescriber = xcn_to_practitioner(rep, env.systems, env.site)
        if order.prescriber is not None:
            break
    for rep in seg.reps(21):
        order.facility = xon_to_organization(rep, env.systems, env.site)
        if order.facility is not None:
            break
    order.schedule = tq_field_schedule(seg, 7, env)
    return order


def _tq_bounds(seg: Segment, field_no: int, env: Env) -> tuple[str, str]:
    """TQ-4 / TQ-5 (start / end DTM) of a TQ field, converted in the sender's time zone."""
    rep = seg.rep(field_no)
    if rep is None:
        return "", ""
    start, end = value(rep.get(4)), value(rep.get(5))
    where = env.where(seg, field_no)
    return (dtm(start, env.zone, where) if start else "", dtm(end, env.zone, where) if end else "")


def tq_field_schedule(seg: Segment, field_no: int, env: Env) -> Schedule | None:
    """The Schedule of a TQ field (RXE-1); None when the field is empty."""
    rep = seg.rep(field_no)
    if rep is None:
        return None
    return tq_to_schedule(rep, *_tq_bounds(seg, field_no, env))


def tq1_to_schedule(seg: Segment, env: Env) -> Schedule:
    """TQ1 -> Schedule (IG TQ1--MedicationRequest: TQ1-2 dose, TQ1-3 repeat pattern, TQ1-4 times of
    day, TQ1-6 boundsDuration (when TQ1-7/8 are empty) and the days' supply, TQ1-7/8 boundsPeriod,
    TQ1-9 priority, TQ1-10 condition text, TQ1-11 text, TQ1-13 duration, TQ1-14 count)."""
    schedule = Schedule()
    schedule.dose = cq_to_quantity(seg.rep(2), env.where(seg, 2))
    for rep in seg.reps(3):
        repeat_pattern(rep.get(1), schedule)
        break
    times = [t for t in (tm_to_time(r.get(1), env.where(seg, 4)) for r in seg.reps(4)) if t]
    if times:
        schedule.merge_repeat({"timeOfDay": times})
    start, end = env.time(seg, 7), env.time(seg, 8)
    service = cq_to_duration(seg.rep(6), env.where(seg, 6))
    if service is not None:
        schedule.supply_days = service[1]
    if start or end:
        schedule.merge_repeat({"boundsPeriod": {k: v for k, v in (("start", start), ("end", end)) if v}})
    elif service is not None and service[1] is not None:
        schedule.merge_repeat({"boundsDuration": service[0]})
    schedule.priority = priority(seg.get(9))
    schedule.condition = value(seg.get(10))
    schedule.text = value(seg.get(11))
    occurrence = cq_to_duration(seg.rep(13), env.where(seg, 13))
    if occurrence is not None and "code" in occurrence[0]:
        schedule.merge_repeat({"duration": occurrence[0]["value"], "durationUnit": occurrence[0]["code"]})
    total = value(seg.get(14))
    if total.isdigit() and int(total) > 0:
        schedule.merge_repeat({"count": int(total)})
    return schedule


def rxr_to_route(seg: Segment) -> JSON:
    """RXR -> Dosage fields: route (RXR-1: the IG target + SNOMED CT, codemaps/route.json; an unknown
    code kept as text, a sender's own coding kept when CWE-3 names another system), site (RXR-2),
    method (RXR-4)."""
    out: JSON = {}
    rep = seg.rep(1)
    code = value(rep.get(1)) if rep is not None else ""
    if rep is not None and code:
        target = concept_map("route").get(code)
        sent = cwe(seg, 1)
        codings: list[JSON] = []
        if target is not None:
            codings.append(target.coding())
            snomed = route_snomed().get(code.upper())
            if snomed is not None:
                codings.append(snomed)
        system_name = value(rep.get(3)).upper()
        if sent is not None and system_name and system_name != "HL70162":
            codings.extend(sent.get("coding", []))
        route: JSON = {"coding": codings} if codings else {}
        text = value(rep.get(2)) or ("" if codings else code)
        if text:
            route["text"] = text
        out["route"] = route
    site = cwe(seg, 2)
    if site is not None:
        out["site"] = site
    method = cwe(seg, 4)
    if method is not None:
        out["method"] = method
    return out

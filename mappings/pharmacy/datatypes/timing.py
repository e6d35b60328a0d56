"""RPT / TQ -> Timing: the repeat pattern (HL70335), bounds, times of day, priority.

IG rows: segments/TQ1--MedicationRequest.csv (TQ1-3 RPT[Timing] -> timing, TQ1-4 -> time of day,
TQ1-6 -> repeat.boundsDuration, TQ1-7/8 -> boundsPeriod, TQ1-9 -> priority, TQ1-10 ->
additionalInstruction.text, TQ1-11 -> text, TQ1-13 -> duration, TQ1-14 -> count). The deprecated TQ
(RXE-1, ORC-7; HL7 v2.5 4.4) carries the same facts in its components: TQ-1 quantity, TQ-2.1 repeat
pattern, TQ-2.2 explicit time, TQ-3 duration (``D4``: 4 days; ``X5``: 5 times), TQ-4/5 start/end,
TQ-6 priority, TQ-8 text, TQ-12 total occurrences. Named repeat patterns are in
codemaps/repeat-pattern.json; ``Q<n><unit>`` (Q4H, Q2D, Q1W) is read by rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.hl7v2.tokenizer import Rep
from mappings.datatypes.primitives import value
from mappings.pharmacy.codemaps import UCUM, concept_map, repeat_patterns, time_unit

JSON = dict[str, Any]
V2_0335 = "http://terminology.hl7.org/CodeSystem/v2-0335"
_INTERVAL = re.compile(r"Q(\d{1,3})([SMHDWL])")
_TQ_DURATION = re.compile(r"([SMHDWLX])(\d{1,4})")


@dataclass(slots=True)
class Schedule:
    """What a TQ1 (or a TQ field) says about one order: Dosage.timing and its neighbours."""

    timing: JSON = field(default_factory=dict)
    as_needed: bool = False
    priority: str = ""
    text: str = ""
    condition: str = ""
    dose: JSON | None = None
    supply_days: float | None = None

    def merge_repeat(self, fields: JSON) -> None:
        if fields:
            self.timing.setdefault("repeat", {}).update(fields)


def repeat_pattern(code: str, schedule: Schedule) -> None:
    """HL70335 code -> Timing.code (+ repeat fields, as-needed) on ``schedule``."""
    code = value(code)
    if not code:
        return
    named, units = repeat_patterns()
    upper = code.upper()
    row = named.get(upper)
    coding: JSON = {"system": V2_0335, "code": code}
    repeat: JSON = {}
    if row is not None:
        if row.get("display"):
            coding["display"] = row["display"]
        repeat = {k: row[k] for k in ("frequency", "period", "periodUnit", "when", "count") if k in row}
        schedule.as_needed = schedule.as_needed or bool(row.get("as_needed"))
    elif (m := _INTERVAL.fullmatch(upper)) is not None and int(m[1]) > 0:
        repeat = {"frequency": 1, "period": int(m[1]), "periodUnit": units[m[2]]}
    schedule.timing["code"] = {"coding": [coding]}
    schedule.merge_repeat(repeat)


def priority(code: str) -> str:
    """HL70485 priority -> request-priority code ('' when it has none)."""
    target = concept_map("priority").get(value(code)) if value(code) else None
    return target.code if target is not None else ""


def tq_duration(text: str, schedule: Schedule) -> None:
    """TQ-3 duration (``D4``, ``W2``, ``X5``) -> boundsDuration / count (+ supply days)."""
    m = _TQ_DURATION.fullmatch(value(text).upper())
    if m is None or int(m[2]) == 0:
        return
    letter, amount = m[1], int(m[2])
    if letter == "X":
        schedule.merge_repeat({"count": amount})
        return
    unit = repeat_patterns()[1][letter]
    known = time_unit(unit)
    schedule.merge_repeat({"boundsDuration": {"value": amount, "unit": unit, "system": UCUM, "code": unit}})
    if known is not None:
        schedule.supply_days = amount * known[1]


def tq_to_schedule(rep: Rep | None, start: str, end: str) -> Schedule:
    """A TQ field (RXE-1, ORC-7) -> Schedule; ``start``/``end`` are TQ-4/TQ-5 already converted by
    the caller (they need the segment's time zone and location)."""
    schedule = Schedule()
    if rep is None:
        return schedule
    repeat_pattern(rep.get(2, 1), schedule)
    tq_duration(rep.get(3), schedule)
    if start or end:  # bounds[x] is a choice: a period wins over the duration (kept as days' supply)
        schedule.timing.get("repeat", {}).pop("boundsDuration", None)
        schedule.merge_repeat({"boundsPeriod": {k: v for k, v in (("start", start), ("end", end)) if v}})
    schedule.priority = priority(rep.get(6))
    schedule.condition = value(rep.get(7))
    schedule.text = value(rep.get(8))
    total = value(rep.get(12))
    if total.isdigit() and int(total) > 0:
        schedule.merge_repeat({"count": int(total)})
    return schedule

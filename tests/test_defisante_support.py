"""Helpers shared by the Défi Santé tests (this module holds no test).

``feed_oracle`` re-derives, from the raw simulated messages alone (a plain split of segments and
fields, not the gateway's mapping), each person's ER visits and hospital stays: the independent
answer the register, the candidate list and the outcomes are checked against.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.e2e_helpers import wait_for

ALERT_KINDS = ("er-arrival", "er-arrival-family", "er-cancelled", "er-discharge")


@dataclass
class Oracle:
    visits: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))  # NAM → arrivals
    stays: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=lambda: defaultdict(list))


def _fields(raw: bytes) -> dict[str, list[str]]:
    text = raw.decode("utf-8") if b"UNICODE UTF-8" in raw.split(b"\r", 1)[0] else raw.decode("latin-1")
    return {line.split("|", 1)[0]: line.split("|") for line in text.split("\r") if line}


def _when(text: str) -> datetime:
    return datetime.strptime(text[:12], "%Y%m%d%H%M")


def feed_oracle(messages: list[tuple[datetime, bytes]]) -> Oracle:
    """ER visits (class E, not cancelled) and stays (class I, with an A03) per NAM."""
    nam_of_mrn: dict[str, str] = {}
    visit_nam: dict[str, str] = {}
    visit_mrn: dict[str, str] = {}
    arrival: dict[str, datetime] = {}
    klass: dict[str, str] = {}
    cancelled: set[str] = set()
    ended: dict[str, datetime] = {}
    for _t, raw in messages:
        seg = _fields(raw)
        trigger = seg["MSH"][8].split("^")[1]
        ids = seg["PID"][3].split("~")
        mrn = ids[0].split("^")[0]
        nam = next((i.split("^")[0] for i in ids if i.endswith("^JHN")), "")
        if nam:
            nam_of_mrn[mrn] = nam
        if trigger == "A40":
            nam_of_mrn[seg["MRG"][1].split("^")[0]] = nam
            continue
        pv1 = seg["PV1"]
        visit = pv1[19].split("^")[0]
        visit_mrn[visit] = mrn
        klass[visit] = pv1[2]
        if nam:
            visit_nam[visit] = nam
        if pv1[44]:
            arrival[visit] = _when(pv1[44])
        if trigger == "A11":
            cancelled.add(visit)
        if trigger == "A03" and pv1[45]:
            ended[visit] = _when(pv1[45])
    out = Oracle()
    for visit, when in arrival.items():
        nam = visit_nam.get(visit) or nam_of_mrn.get(visit_mrn[visit], "")
        if not nam or visit in cancelled:
            continue
        if klass[visit] == "E":
            out.visits[nam].append(when)
        elif klass[visit] == "I" and visit in ended:
            out.stays[nam].append((when, ended[visit]))
    return out


def alert_events(log: Any, topic: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(rec.value) for rec in log.read_all(topic)]


def wait_until(predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.05) -> Any:
    return wait_for(predicate, timeout_s, interval_s)


def enroll_body(case_manager: str = "Practitioner/cm-1", *, family: bool = False, relatives: tuple[str, ...] = (),
                start: str | None = None, goals: tuple[str, ...] = ("Moins de visites à l'urgence",),
                extra: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "caseManager", "valueReference": {"reference": case_manager}}]
    params += [{"name": "goal", "valueString": g} for g in goals]
    params.append({"name": "activity", "valueString": "Évaluation à domicile"})
    params.append({"name": "familyInvolvement", "valueBoolean": family})
    params += [{"name": "relatedPerson", "valueReference": {"reference": f"RelatedPerson/{r}"}} for r in relatives]
    if start:
        params.append({"name": "start", "valueDateTime": start})
    params += list(extra)
    return {"resourceType": "Parameters", "parameter": params}

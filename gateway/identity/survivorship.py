"""Per-element survivorship: what the resolver publishes for a resource a message touches.

Every person-scoped resource (the person's Patient, Encounters, Conditions, RelatedPersons, the
pharmacy resources) is the stored version with the message applied element by element
(mappings/merge.py): each element shows the most recent statement by event time (EVN-2, else
MSH-7) across all messages and sites, a ``""`` included; an element nobody sent is kept; an older
message still adds what nobody said since. The event time of every element is kept in the index
(``resource.times``), so this holds across restarts and for messages arriving out of order. Policy:
README.md, "Survivorship".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.eventlog.state.identity import IdentityIndex, Stored
from gateway.identity import visit
from mappings import merge

JSON = dict[str, Any]
log = logging.getLogger("pivot.identity")
_PERSON_FIELDS = frozenset({"identifier", "active", "link"})  # the identity's own (bodies.person_patient)


@dataclass(frozen=True, slots=True)
class Survivor:
    """The resource to publish, its element times, the resource's event time, and whether to
    publish it (it changed, or the message is the newest word on it: a re-resolution publishes it
    again; an older message that changed nothing is dropped)."""

    body: JSON
    times: merge.Times
    event_ms: int
    publish: bool


def _at(ev: int | None, stored: Stored | None, times: merge.Times) -> int:
    """The message's event time; without one it counts as the latest word (arrival order)."""
    if ev is not None:
        return ev
    return max(merge.newest(times) or 0, stored.event_ms if stored else 0)


def _ms(text: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _no_end_before_start(enc: JSON, stored: JSON | None) -> JSON:
    """An end before the start (two messages disagreeing) is never stored: the stored end stays."""
    period = enc.get("period") or {}
    start, end = _ms(period.get("start", "")), _ms(period.get("end", ""))
    if start is None or end is None or end >= start:
        return enc
    log.warning("identity: end before start dropped (Encounter %s)", enc.get("id"))
    kept = {k: v for k, v in period.items() if k != "end"}
    old_end = ((stored or {}).get("period") or {}).get("end")
    if old_end and (_ms(old_end) or 0) >= start:
        kept["end"] = old_end
    return {**enc, "period": kept}


def resource(ix: IdentityIndex, res: JSON, nulls: Iterable[str], ev: int | None, trigger: str, *,
             whole: bool = False) -> Survivor:
    """``res`` (mapped; for a cancel, ``whole``: the reversed Encounter, which replaces every
    element it no longer has) applied onto its stored version."""
    rtype, rid = res["resourceType"], res["id"]
    stored = ix.resource(rtype, rid)
    times = dict(stored.times or {}) if stored is not None else {}
    at = _at(ev, stored, times)
    body = stored.body if stored is not None else None
    nulls = list(nulls)
    if rtype == "Encounter" and not whole:
        res = visit.transition(res, body, trigger)
    if whole and body is not None:
        sent = set(merge.unit_names(res))
        nulls += [u for u in merge.unit_names(body) if u not in sent]
    applied = merge.apply(body, times, res, nulls, at, default_ms=stored.event_ms if stored else at)
    out, changed = applied.body, applied.changed
    if rtype == "Encounter":
        out = visit.settle(_no_end_before_start(out, body))
        changed = changed or (out is not applied.body and merge.content(out) != merge.content(body or {}))
    newest = max(merge.newest(times) or 0, stored.event_ms if stored else 0)
    return Survivor(out, applied.times, max(at, stored.event_ms if stored else at), changed or at >= newest)


def person(ix: IdentityIndex, pid: str, mapped: list[tuple[JSON, list[str]]], ev: int | None, *,
           pharmacy: bool, inherited: list[Stored]) -> Survivor:
    """The person's Patient before its identifiers and links (gateway.identity.bodies.person_patient):
    the stored one, the records it absorbed (each element at its own time), then the message's
    PID group(s). A pharmacy knows the person by NAM with little else: once a Patient is stored,
    what it sends only fills elements nobody sent (event time 0)."""
    stored = ix.resource("Patient", pid)
    times = dict(stored.times or {}) if stored is not None else {}
    default = stored.event_ms if stored is not None else 0
    body: JSON | None = _demographics(stored.body) if stored is not None else None
    start = dict(times)
    for record in inherited:
        own = record.times or {}
        applied = merge.apply(body, times, _demographics(record.body), [],
                              {u: own.get(u, record.event_ms) for u in merge.units(record.body)}, default_ms=default)
        body, times = applied.body, applied.times
    at = 0 if pharmacy and stored is not None else _at(ev, stored, start)
    for patient, nulls in mapped:
        applied = merge.apply(body, times, _demographics(patient), nulls, at, default_ms=default)
        body, times = applied.body, applied.times
    assert body is not None  # at least one PID group, or a stored Patient
    newest = max(merge.newest(start) or 0, default)
    event = max([at, default, *(r.event_ms for r in inherited)])
    return Survivor(body, times, event, at >= newest or bool(inherited))


def _demographics(patient: JSON) -> JSON:
    return {k: v for k, v in patient.items() if k not in _PERSON_FIELDS}


ASSERTED_URL = "urn:pivot:extension:asserted-elements"
_SHARED = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location", "Provenance"})


def asserted(resources: list[JSON], nulls: dict[str, list[str]]) -> list[JSON]:
    """What one message said about each resource it carried, for its Provenance (which site said
    what; the Provenance's agent is the site): one extension per target with its ``element``s
    (the units it sent, mappings/merge.py) and its ``nulled`` paths (sent as ``""``). Element
    names only, never values; a pure function of the mapping, so a replay gives the same."""
    out: list[JSON] = []
    for res in resources:
        if res["resourceType"] in _SHARED:
            continue
        ref = f"{res['resourceType']}/{res['id']}"
        parts: list[JSON] = [{"url": "target", "valueReference": {"reference": ref}}]
        parts += [{"url": "element", "valueString": unit} for unit in merge.unit_names(res)
                  if unit not in _PERSON_FIELDS]  # = the units of _demographics(res), without its copy
        parts += [{"url": "nulled", "valueString": path} for path in nulls.get(ref, [])]
        out.append({"url": ASSERTED_URL, "extension": parts})
    return out

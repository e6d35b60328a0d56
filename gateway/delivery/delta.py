"""Skip what the server already has: a replay writes nothing, an update writes only what changed.

FHIR servers are not required to detect no-op updates (sekmet, like most, stores a new version on
every PUT), so before each transaction the sink reads the current state of every entry in one
``batch`` Bundle of GETs (:func:`read_request`) and :func:`prune` drops the entries whose current
server content already equals ours. References to a dropped entry's ``urn:uuid`` become literal
references to the id the server holds.

Equality ignores ``meta.versionId``, ``meta.lastUpdated`` and ``meta.source`` (ours names the
message: a shared Practitioner re-sent by every message would otherwise get a version per message).
Whatever the pre-read cannot establish (entry error, several matches, unexpected shape) is simply
written: pruning is an optimisation, never a condition of correctness.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from gateway.delivery.bundle import JSON, iter_references

_VOLATILE_META = ("versionId", "lastUpdated", "source")


@dataclass(slots=True)
class Plan:
    """What to send: ``bundle`` (None when nothing changed) and how many entries were skipped."""

    bundle: JSON | None
    unchanged: int = 0
    changed: list[str] = field(default_factory=list)  # Type/id of the written entries


def read_request(bundle: JSON) -> JSON:
    """A ``batch`` Bundle reading the current server state of every entry of a transaction."""
    entries = [{"request": {"method": "GET", "url": e["request"]["url"]}} for e in bundle.get("entry") or []]
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def _current(reply_entry: Any) -> tuple[bool, JSON | None]:
    """(known, resource): known=False when the state cannot be established; resource None = absent."""
    if not isinstance(reply_entry, dict):
        return False, None
    response = reply_entry.get("response") or {}
    status = str(response.get("status", "")).split(" ", 1)[0]
    if status in ("404", "410"):
        return True, None
    if status != "200":
        return False, None
    res = reply_entry.get("resource")
    if not isinstance(res, dict):
        return False, None
    if res.get("resourceType") != "Bundle":
        return True, res
    matches = [e.get("resource") for e in res.get("entry") or []
               if (e.get("search") or {}).get("mode", "match") == "match"]
    if len(matches) == 0:
        return True, None
    if len(matches) == 1 and isinstance(matches[0], dict):
        return True, matches[0]
    return False, None


def _normalised(resource: JSON) -> JSON:
    out = copy.deepcopy(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in _VOLATILE_META}
    if meta:
        out["meta"] = meta
    return out


def prune(bundle: JSON, reply: JSON) -> Plan:
    """Drop the entries the server already holds with the same content (see module docstring)."""
    entries: list[JSON] = list(bundle.get("entry") or [])
    answers: list[Any] = list(reply.get("entry") or [])
    if reply.get("resourceType") != "Bundle" or len(answers) != len(entries):
        return Plan(bundle, 0, [_key(e) for e in entries])
    states = [_current(a) for a in answers]
    # Where each entry's urn:uuid will point on the server: the id it holds, else ours.
    resolved: dict[str, str] = {}
    for entry, (_known, current) in zip(entries, states, strict=True):
        res = entry["resource"]
        rid = current["id"] if current and current.get("id") else res["id"]
        resolved[entry["fullUrl"]] = f"{res['resourceType']}/{rid}"
    keep: list[JSON] = []
    dropped: dict[str, str] = {}
    for entry, (known, current) in zip(entries, states, strict=True):
        if known and current is not None and _same(entry["resource"], current, resolved):
            dropped[entry["fullUrl"]] = resolved[entry["fullUrl"]]
        else:
            keep.append(entry)
    if not keep:
        return Plan(None, len(entries), [])
    if not dropped:
        return Plan(bundle, 0, [_key(e) for e in keep])
    out = copy.deepcopy(keep)
    for entry in out:
        for ref in iter_references(entry["resource"]):
            if ref["reference"] in dropped:
                ref["reference"] = dropped[ref["reference"]]
    return Plan({**bundle, "entry": out}, len(dropped), [_key(e) for e in out])


def _same(ours: JSON, current: JSON, resolved: dict[str, str]) -> bool:
    expected = copy.deepcopy(ours)
    expected["id"] = current.get("id")
    for ref in iter_references(expected):
        ref["reference"] = resolved.get(ref["reference"], ref["reference"])
    return _normalised(expected) == _normalised(current)


def _key(entry: JSON) -> str:
    res = entry.get("resource") or {}
    return f"{res.get('resourceType')}/{res.get('id')}"

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

**Resolution order.** A resource can travel in bundles of several keys (a shared Practitioner in
every patient's bundle, Encounters re-published under a merge survivor's key), delivered by any
instance in any order. Each copy carries the identity resolution that produced it (the envelope's
``resolved``) as a ``meta.tag`` of system :data:`RANK_SYSTEM`, code = the rank (:func:`stamp`).
An entry whose server copy carries a HIGHER rank is older news: it is dropped like an unchanged
one (``Plan.stale``; references to it follow the server's id). Equality ignores that tag (a shared
Practitioner re-sent by every message is not rewritten for a new rank). A copy without a rank
(ours or the server's) is compared and written as before; an unranked copy of ours written over a
ranked server copy keeps the server's tag, as the embedded store keeps the rank it holds. An entry
overwriting a server copy is sent as ``PUT Type/<server id>`` with ``ifMatch`` on the version read:
a copy another instance writes between our pre-read and our write fails the transaction (412), which
the client re-plans, instead of being overwritten unseen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.delivery.bundle import JSON, iter_references

_VOLATILE_META = ("versionId", "lastUpdated", "source")
RANK_SYSTEM = "urn:pivot:resolution"
"""``meta.tag`` system of a delivered copy's resolution rank (code = the rank in decimal)."""


@dataclass(slots=True)
class Plan:
    """What to send: ``bundle`` (None when nothing changed) and how many entries were skipped."""

    bundle: JSON | None
    unchanged: int = 0
    changed: list[str] = field(default_factory=list)  # Type/id of the written entries
    stale: int = 0  # entries dropped because the server holds a later resolution's copy


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


def _is_rank(tag: Any) -> bool:
    return isinstance(tag, dict) and tag.get("system") == RANK_SYSTEM


def rank_of(resource: JSON) -> int:
    """The resolution rank a copy carries (the highest, should a server keep several tags); 0: none."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    codes = [t.get("code") for t in tags or [] if _is_rank(t)]
    return max((int(c) for c in codes if isinstance(c, str) and c.isascii() and c.isdigit() and len(c) <= 18),
               default=0)


def with_rank(resource: JSON, rank: int) -> None:
    """Tag ``resource`` (in place; its ``meta`` replaced by a copy, mapped resources may share one)
    with ``rank``, replacing any rank tag it had."""
    meta = dict(resource["meta"]) if isinstance(resource.get("meta"), dict) else {}
    tags = meta["tag"] if isinstance(meta.get("tag"), list) else []
    meta["tag"] = [t for t in tags if not _is_rank(t)] + [{"system": RANK_SYSTEM, "code": str(rank)}]
    resource["meta"] = meta


def stamp(bundle: JSON, rank: int) -> None:
    """Tag every entry of ``bundle`` (parsed for this delivery: changed in place) with the resolution
    ``rank`` of its message; 0 (unranked) leaves it as it is (a replayed dead letter keeps its tags)."""
    if rank > 0:
        for entry in bundle.get("entry") or []:
            with_rank(entry["resource"], rank)


def _normalised(resource: JSON) -> JSON:
    out = dict(resource)  # only "meta" is replaced
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in _VOLATILE_META}
    tags = [t for t in meta.pop("tag", None) or [] if not _is_rank(t)]
    if tags:
        meta["tag"] = tags
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
    overwritten: dict[str, JSON] = {}  # fullUrl → the server copy a kept entry replaces
    stale = 0
    for entry, (known, current) in zip(entries, states, strict=True):
        verdict = _verdict(entry["resource"], current, resolved) if known and current is not None else "write"
        if verdict == "write":
            keep.append(entry)
            if known and current is not None:
                overwritten[entry["fullUrl"]] = current
        else:
            dropped[entry["fullUrl"]] = resolved[entry["fullUrl"]]
            stale += verdict == "stale"
    if not keep:
        return Plan(None, len(entries) - stale, [], stale)
    if not dropped and not overwritten:
        return Plan(bundle, 0, [_key(e) for e in keep])
    out = [_edited(entry, overwritten.get(entry["fullUrl"]), dropped) for entry in keep]
    return Plan({**bundle, "entry": out}, len(dropped) - stale, [_key(e) for e in out], stale)


def _verdict(ours: JSON, current: JSON, resolved: dict[str, str]) -> Literal["stale", "unchanged", "write"]:
    """``stale``: the server copy is a later resolution's (older news: never written over it)."""
    rank = rank_of(ours)
    if rank and rank_of(current) > rank:
        return "stale"
    return "unchanged" if _same(ours, current, resolved) else "write"


def _edited(entry: JSON, current: JSON | None, dropped: dict[str, str]) -> JSON:
    """A copy of a kept entry: references to dropped entries name the server's ids. Over an existing
    server copy (``current``): ``PUT Type/<its id>`` with ``If-Match`` on the version read, so that a
    copy written meanwhile (by another instance) makes the transaction fail (412) and be re-planned
    instead of being overwritten unseen; an unranked copy keeps the server's rank."""
    out = copy.deepcopy(entry)
    res = out["resource"]
    if current is not None:
        theirs = rank_of(current)
        if theirs and not rank_of(res):
            with_rank(res, theirs)
        meta = current.get("meta")
        version = meta.get("versionId") if isinstance(meta, dict) else None
        if version and isinstance(current.get("id"), str):
            res["id"] = current["id"]
            out["request"] = {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}",
                              "ifMatch": f'W/"{version}"'}
    for ref in iter_references(res):
        if ref["reference"] in dropped:
            ref["reference"] = dropped[ref["reference"]]
    return out


def _same(ours: JSON, current: JSON, resolved: dict[str, str]) -> bool:
    expected = copy.deepcopy(ours)
    expected["id"] = current.get("id")
    for ref in iter_references(expected):
        ref["reference"] = resolved.get(ref["reference"], ref["reference"])
    return _normalised(expected) == _normalised(current)


def _key(entry: JSON) -> str:
    res = entry.get("resource") or {}
    return f"{res.get('resourceType')}/{res.get('id')}"

"""Update semantics: a mapped message applied onto the stored resource element by element.

HL7 v2 (2.5.1 section 2.5.3): an empty field means "not sent, keep what you know", the explicit
null ``""`` means "delete". A message is mapped as if alone (mappings/messages/engine.py); the
mapping lists, beside the resources, the elements the message explicitly nulled
(``MapResult.nulls``: ``"Type/id"`` → element paths, never inside a published resource). This
module applies one onto the other; the identity resolver (gateway/identity/resolve.py) calls it for
every person-scoped resource (Patient, Encounter, RelatedPerson, Condition, the pharmacy resources).

A resource is seen as a set of **units**, each with the event time (epoch ms) of the message that
last said something about it:

- a top-level element (``maritalStatus``, ``name``, ``generalPractitioner``, ``diagnosis``…); the
  choice elements ``deceased[x]`` and ``multipleBirth[x]`` are one unit each, ``_birthDate`` (the
  birth-time extension) goes with ``birthDate``;
- ``period`` and ``hospitalization`` by sub-element (``period.end``,
  ``hospitalization.dischargeDisposition``);
- ``telecom`` per use and system (``telecom.home.phone``), ``address`` per use
  (``address.home``), ``participant`` per type (``participant.ATND``): a site that sends only
  its home phone never drops the work phone another site sent.

Applying a message at event time ``t``: each unit it carries replaces the stored unit unless a
newer statement exists (the unit's time, or the time of a ``""`` that deleted it or a prefix of it,
is later than ``t``); each path it nulled deletes the units under it on the same condition, and
its time is kept so an older message cannot bring the value back; units it does not carry are
kept. Equal times apply in arrival order. The table (field, empty, ``""``, present) is in
mappings/README.md, "Update semantics".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
Times = dict[str, int]

NESTED = frozenset({"period", "hospitalization"})
_GROUP = {"_birthDate": "birthDate", "deceasedBoolean": "deceased", "deceasedDateTime": "deceased",
          "multipleBirthBoolean": "multipleBirth", "multipleBirthInteger": "multipleBirth"}
_HEAD = ("resourceType", "id", "meta")


def _code(item: JSON, key: str) -> str:
    value = item.get(key)
    return str(value) if value else "-"


def _participant_type(item: JSON) -> str:
    for concept in item.get("type") or []:
        for coding in concept.get("coding") or []:
            if coding.get("code"):
                return str(coding["code"])
    return "-"


_KEYED = {
    "telecom": lambda item: f"{_code(item, 'use')}.{_code(item, 'system')}",
    "address": lambda item: _code(item, "use") if item.get("use") else _code(item, "type"),
    "participant": _participant_type,
}


def units(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as units (see module docstring), in the resource's order."""
    out: dict[str, Any] = {}
    for key, val in resource.items():
        if key in _HEAD:
            continue
        if key in NESTED and isinstance(val, dict):
            for sub, part in val.items():
                out[f"{key}.{sub}"] = part
        elif key in _KEYED and isinstance(val, list):
            for item in val:
                out.setdefault(f"{key}.{_KEYED[key](item)}", []).append(item)
        else:
            out.setdefault(_GROUP.get(key, key), {})[key] = val
    return out


def unit_names(resource: Mapping[str, Any]) -> list[str]:
    """The names of :func:`units` alone (cheaper: no values gathered)."""
    out: dict[str, None] = {}
    for key, val in resource.items():
        if key in _HEAD:
            continue
        if key in NESTED and isinstance(val, dict):
            out.update((f"{key}.{sub}", None) for sub in val)
        elif key in _KEYED and isinstance(val, list):
            out.update((f"{key}.{_KEYED[key](item)}", None) for item in val)
        else:
            out[_GROUP.get(key, key)] = None
    return list(out)


def compose(head: Mapping[str, Any], parts: Mapping[str, Any]) -> JSON:
    """A resource from ``head`` (resourceType, id, meta) and units (inverse of :func:`units`)."""
    out: JSON = {k: head[k] for k in _HEAD if k in head}
    for unit, val in parts.items():
        top, _, sub = unit.partition(".")
        if top in NESTED and sub:
            out.setdefault(top, {})[sub] = val
        elif top in _KEYED and sub:
            out.setdefault(top, []).extend(val)
        else:
            out.update(val)
    return out


def _prefixes(unit: str) -> Iterable[str]:
    parts = unit.split(".")
    for n in range(1, len(parts)):
        yield ".".join(parts[:n])


def said_at(times: Mapping[str, int], unit: str) -> int | None:
    """When ``unit`` was last said: its own time or a ``""`` on a prefix of it, whichever is later."""
    own = times.get(unit)
    if "." not in unit:
        return own
    found = [t for t in (own, *(times.get(p) for p in _prefixes(unit))) if t is not None]
    return max(found) if found else None


def _under(unit: str, path: str) -> bool:
    return unit == path or unit.startswith(path + ".")


@dataclass(frozen=True, slots=True)
class Applied:
    """The merged resource, the units' event times, and whether the content changed."""

    body: JSON
    times: Times
    changed: bool


def apply(stored: JSON | None, times: Mapping[str, int], incoming: JSON, nulls: Iterable[str], at: int | Times,
          *, default_ms: int = 0) -> Applied:
    """``incoming`` (said at ``at``: one event time, or per unit) applied onto ``stored``.

    ``times``: the stored units' event times (a unit missing from it counts as said at
    ``default_ms``: the resource's time, for versions stored before element times were kept).
    ``nulls``: element paths the incoming message sent as ``""`` (ignored for a unit it also
    carries). The result's ``meta`` is the incoming one (the message that carried it)."""
    if not stored and not times and isinstance(at, int) and DIRECT_NEW:
        return _apply_new(incoming, nulls, at, changed=stored is None)
    parts = units(stored) if stored else {}
    before = dict(parts)
    known: Times = dict(times)
    for unit in parts:
        known.setdefault(unit, default_ms)
    new = units(incoming)

    def when(unit: str) -> int:
        return at if isinstance(at, int) else at.get(unit, default_ms)

    for unit, val in new.items():
        last = said_at(known, unit)
        if last is None or when(unit) >= last:
            parts[unit] = val
            known[unit] = when(unit)
    for path in nulls:
        if any(_under(unit, path) for unit in new):
            continue
        stamp = when(path)
        for unit in [u for u in parts if _under(u, path)]:
            last = said_at(known, unit)
            if last is None or stamp >= last:
                del parts[unit]
                known[unit] = stamp
        last = said_at(known, path)
        if last is None or stamp >= last:
            known[path] = stamp
    head = incoming if incoming else (stored or {})
    return Applied(compose(head, parts), known, stored is None or parts != before)


DIRECT_NEW = True
""":func:`apply` onto nothing by :func:`_apply_new` (False: the general path; tests compare both)."""


def _apply_new(incoming: JSON, nulls: Iterable[str], at: int, *, changed: bool) -> Applied:
    """:func:`apply` onto nothing at one time (a new resource: the common case), without the
    comparisons that cannot fail: every unit of ``incoming`` at ``at``, then every nulled path it
    does not carry at ``at``; the same result as the general path."""
    parts = units(incoming)
    known: Times = dict.fromkeys(parts, at)
    for path in nulls:
        if not any(_under(unit, path) for unit in parts):
            known[path] = at
    return Applied(compose(incoming if incoming else {}, parts), known, changed or bool(parts))


def content(resource: Mapping[str, Any]) -> JSON:
    """The resource without ``meta`` (which names the message that carried it)."""
    return {k: v for k, v in resource.items() if k != "meta"}


def newest(times: Mapping[str, int]) -> int | None:
    """The latest event time among the units (None when empty)."""
    return max(times.values()) if times else None

"""The program's data, loaded and checked at start-up: exclusion rules and the alert policy.

``mappings/defisante/exclusions.json`` lists rules of two kinds (the branching lives here, the
tables in the file):

- ``visit-diagnosis``: a visit is not counted when ``any`` (or ``all``) of its diagnosis codes in
  ``systems`` fall in one of ``ranges`` (ICD-10 three-character categories, inclusive, compared
  as text: ``O00`` ≤ ``O20`` ≤ ``O99`` ≤ ``O9A``);
- ``person-age-below``: a person younger than ``years`` at the reference date is not listed.

``mappings/defisante/alerts.json`` says which trigger raises which event, who is told and the
text of each Communication. Anything malformed raises ConfigError naming the file and the rule
id (never a value from a message): the gateway refuses to start.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from gateway.defisante.codes import ALL_ROLES, ARRIVAL, CANCELLED, DISCHARGE, FAMILY, KINDS
from gateway.errors import ConfigError

_CATEGORY = re.compile(r"[A-Z][0-9][0-9A-Z]")
_EVENTS = {"arrival": ARRIVAL, "cancelled": CANCELLED, "discharge": DISCHARGE}
_PRIORITIES = frozenset({"routine", "urgent", "asap", "stat"})
_FIELDS = frozenset({"site", "arrival", "departure", "reason"})


@dataclass(frozen=True, slots=True)
class ExclusionRule:
    """One exclusion rule (see the module docstring for the kinds)."""

    id: str
    kind: Literal["visit-diagnosis", "person-age-below"]
    enabled: bool
    description: str
    match: Literal["any", "all"] = "any"
    systems: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, str], ...] = ()
    years: int = 0

    def in_ranges(self, code: str) -> bool:
        """True when an ICD-10 code (``O20.0``, ``O200``, ``o20``) falls in one of the ranges."""
        category = code.replace(".", "").strip().upper()[:3]
        return len(category) == 3 and any(lo <= category <= hi for lo, hi in self.ranges)

    def excludes_visit(self, codes: list[tuple[str, str]]) -> bool:
        """For ``visit-diagnosis`` rules: do these ``(system, code)`` diagnoses exclude the visit?"""
        if self.kind != "visit-diagnosis":
            return False
        hits = [self.in_ranges(code) for system, code in codes if system in self.systems]
        if not hits:
            return False
        return any(hits) if self.match == "any" else all(hits)


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """Which trigger raises which event, who is told, with which text and priority."""

    max_age_hours: float
    triggers: dict[str, str]  # ADT trigger → our kind (er-arrival, er-cancelled, er-discharge)
    recipients: dict[str, tuple[str, ...]]  # kind → CareTeam roles told
    priority: dict[str, str]
    texts: dict[str, str]

    def text(self, kind: str, **values: str) -> str:
        return self.texts[kind].format(**{k: values.get(k, "") or "—" for k in _FIELDS})


@dataclass(frozen=True, slots=True)
class ProgramConfig:
    exclusions: tuple[ExclusionRule, ...]
    alerts: AlertPolicy
    rule_ids: frozenset[str] = field(default_factory=frozenset)

    def enabled(self, chosen: list[str] | None = None) -> tuple[ExclusionRule, ...]:
        """The rules to apply: the enabled ones, or exactly ``chosen`` (ids; [] = none)."""
        if chosen is None:
            return tuple(r for r in self.exclusions if r.enabled)
        unknown = sorted(set(chosen) - self.rule_ids)
        if unknown:
            raise ValueError(f"unknown exclusion rule(s): {', '.join(unknown)}")
        return tuple(r for r in self.exclusions if r.id in chosen)


def _fail(where: str, why: str) -> ConfigError:
    return ConfigError(f"mappings/defisante/{where}: {why}")


def _read(name: str) -> Any:
    try:
        text = resources.files("mappings.defisante").joinpath(name).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise _fail(name, f"cannot be read as JSON ({type(exc).__name__})") from None


def _rule(item: Any, seen: set[str]) -> ExclusionRule:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise _fail("exclusions.json", "every rule needs a string id")
    rid = item["id"]
    where = f"exclusions.json rule {rid}"
    if rid in seen:
        raise _fail(where, "duplicate id")
    seen.add(rid)
    if not isinstance(item.get("enabled"), bool) or not isinstance(item.get("description"), str):
        raise _fail(where, "needs enabled (true/false) and a description")
    kind = item.get("kind")
    if kind == "person-age-below":
        years = item.get("years")
        if not isinstance(years, int) or isinstance(years, bool) or not 0 < years < 150:
            raise _fail(where, "years must be an integer between 1 and 149")
        return ExclusionRule(rid, "person-age-below", item["enabled"], item["description"], years=years)
    if kind != "visit-diagnosis":
        raise _fail(where, "kind must be visit-diagnosis or person-age-below")
    match = item.get("match")
    if match not in ("any", "all"):
        raise _fail(where, "match must be any or all")
    systems = item.get("systems")
    if not isinstance(systems, list) or not systems or not all(isinstance(s, str) and s for s in systems):
        raise _fail(where, "systems must be a non-empty list of code system URIs")
    ranges = item.get("ranges")
    if not isinstance(ranges, list) or not ranges:
        raise _fail(where, "ranges must be a non-empty list of [low, high] categories")
    checked: list[tuple[str, str]] = []
    for pair in ranges:
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(c, str) and _CATEGORY.fullmatch(c)
                                                                   for c in pair) or pair[0] > pair[1]):
            raise _fail(where, "each range is [low, high], three-character ICD-10 categories, low <= high")
        checked.append((pair[0], pair[1]))
    return ExclusionRule(rid, "visit-diagnosis", item["enabled"], item["description"], match,
                         frozenset(systems), tuple(checked))


def _template_ok(text: Any) -> bool:
    if not isinstance(text, str) or not text:
        return False
    try:
        names = {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}
    except ValueError:
        return False
    return names <= _FIELDS


def _policy(data: Any) -> AlertPolicy:
    name = "alerts.json"
    if not isinstance(data, dict):
        raise _fail(name, "must be an object")
    age = data.get("max_age_hours")
    if not isinstance(age, int | float) or isinstance(age, bool) or age <= 0:
        raise _fail(name, "max_age_hours must be a positive number")
    triggers = data.get("triggers")
    if not isinstance(triggers, dict) or not all(isinstance(v, str) and v in _EVENTS for v in triggers.values()):
        raise _fail(name, f"triggers maps ADT triggers to one of {', '.join(sorted(_EVENTS))}")
    recipients = data.get("recipients")
    if not isinstance(recipients, dict) or set(recipients) != {ARRIVAL, DISCHARGE}:
        raise _fail(name, f"recipients lists the CareTeam roles told for {ARRIVAL} and {DISCHARGE}")
    for kind, roles in recipients.items():
        if not isinstance(roles, list) or not roles or not set(roles) <= ALL_ROLES:
            raise _fail(name, f"recipients of {kind}: a non-empty list of {', '.join(sorted(ALL_ROLES))}")
    priority, texts = data.get("priority"), data.get("texts")
    if not isinstance(priority, dict) or set(priority) != set(KINDS) or not set(priority.values()) <= _PRIORITIES:
        raise _fail(name, f"priority gives one of {', '.join(sorted(_PRIORITIES))} for every kind")
    if not isinstance(texts, dict) or set(texts) != set(KINDS) or not all(_template_ok(t) for t in texts.values()):
        raise _fail(name, f"texts gives a template for every kind, with fields among {', '.join(sorted(_FIELDS))}")
    if "{reason}" in texts[FAMILY]:
        raise _fail(name, "the family text must not carry the reason (minimum necessary disclosure)")
    return AlertPolicy(float(age), {str(k): _EVENTS[v] for k, v in triggers.items()},
                       {k: tuple(v) for k, v in recipients.items()}, dict(priority), dict(texts))


def load_config() -> ProgramConfig:
    """Read and check both files; ConfigError (the gateway does not start) when anything is wrong."""
    data = _read("exclusions.json")
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise _fail("exclusions.json", "needs a rules list")
    seen: set[str] = set()
    rules = tuple(_rule(item, seen) for item in data["rules"])
    return ProgramConfig(rules, _policy(_read("alerts.json")), frozenset(seen))


def parse_rules(items: list[Any]) -> tuple[ExclusionRule, ...]:
    """Check a list of rules given as data (tests, a deployment's own file)."""
    seen: set[str] = set()
    return tuple(_rule(item, seen) for item in items)

"""Pharmacy code maps as data (``*.json`` beside this file), loaded and checked once at import.

ConceptMap-shaped tables (``order-control``, ``order-status``, ``priority``, ``completion-status``,
``substitution-status``, ``substitution-allowed``, ``dispense-status``, ``route``) use the format
and the explicit unmapped policy of :mod:`mappings.codemaps` (``omit`` / ``fixed`` / ``text``).
The others have a shape of their own, checked here:

- ``messages.json``: supported type/trigger -> structure (required segment, mapped segments);
- ``drug-coding-systems.json``: CWE-3 names of drug code systems (DIN, ATC); unmapped: delegate to
  the general table (``mappings.datatypes.coding_system``);
- ``din-atc.json``: DIN -> ATC (source documented in the file), DIN shape, unknown-DIN policy
  (``accept``: kept with its DIN only, ``reject``: MapError 103);
- ``atc-classes.json``: high-risk ATC classes (prefixes);
- ``repeat-pattern.json``, ``time-units.json``: TQ1 repeat patterns and duration units;
- ``authorities.json``: licence authorities (OPQ) added to the identifier systems;
- ``profile-rules.json``: the medication-profile and alert policy (gateway/pharmacy).

Anything malformed raises ConfigError naming the file (the gateway refuses to start).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gateway.errors import ConfigError
from mappings.codemaps import CodeMap, parse_codemap

JSON = dict[str, Any]
DIN_SYSTEM = "http://hl7.org/fhir/NamingSystem/ca-hc-din"
ATC_SYSTEM = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
CONCEPT_MAPS = ("order-control", "order-status", "priority", "completion-status", "substitution-status",
                "substitution-allowed", "dispense-status", "route")


def load_json(filename: str) -> Any:
    """A JSON data file of this package; ConfigError when unreadable."""
    try:
        text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mappings/pharmacy/codemaps/{filename}: unreadable ({type(exc).__name__})") from None


def _fail(name: str, why: str) -> ConfigError:
    return ConfigError(f"mappings/pharmacy/codemaps/{name}.json: {why}")


@cache
def concept_map(name: str) -> CodeMap:
    """One ConceptMap-shaped table of this package (``mappings.codemaps`` format)."""
    return parse_codemap(name, load_json(f"{name}.json"))


@cache
def route_snomed() -> dict[str, JSON]:
    """RXR-1 route code -> the SNOMED CT coding carried as a second coding (route.json ``snomed``)."""
    out: dict[str, JSON] = {}
    for code, element in load_json("route.json")["elements"].items():
        extra = element.get("snomed")
        if extra is None:
            continue
        if not isinstance(extra, dict) or not isinstance(extra.get("code"), str):
            raise _fail("route", f"element {code}: snomed needs a code")
        out[code] = {"system": SNOMED, "code": extra["code"], "display": str(extra.get("display", ""))}
    return out


@dataclass(frozen=True, slots=True)
class Structure:
    """One pharmacy message structure: the segment it must carry and the segments it maps."""

    name: str
    required: str
    segments: frozenset[str]


@cache
def messages() -> tuple[dict[str, dict[str, str]], dict[str, Structure], frozenset[str]]:
    """(message code -> trigger -> structure name, structures, segments always read)."""
    data = load_json("messages.json")
    msgs, structs = data.get("messages"), data.get("structures")
    if not isinstance(msgs, dict) or not isinstance(structs, dict):
        raise _fail("messages", "needs 'messages' and 'structures'")
    built: dict[str, Structure] = {}
    for name, raw in structs.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("required"), str) or \
                not isinstance(raw.get("segments"), dict):
            raise _fail("messages", f"structure {name} needs 'required' and 'segments'")
        built[name] = Structure(name, raw["required"], frozenset(raw["segments"]) | {raw["required"]})
    triggers: dict[str, dict[str, str]] = {}
    for code, by_trigger in msgs.items():
        if not isinstance(by_trigger, dict) or any(s not in built for s in by_trigger.values()):
            raise _fail("messages", f"message {code} names an unknown structure")
        triggers[str(code).upper()] = {str(t).upper(): str(s) for t, s in by_trigger.items()}
    return triggers, built, frozenset(data.get("always_read", []))


@cache
def drug_systems() -> dict[str, str]:
    """Upper-cased CWE-3 name -> system URI for drug codes (others: the general table)."""
    data = load_json("drug-coding-systems.json")
    elements = data.get("elements")
    if not isinstance(elements, dict) or (data.get("unmapped") or {}).get("mode") != "delegate":
        raise _fail("drug-coding-systems", "needs elements and unmapped.mode 'delegate'")
    return {str(k).upper(): str(v) for k, v in elements.items()}


@dataclass(frozen=True, slots=True)
class DinTable:
    """DIN -> (ATC code, ATC display); the DIN shape and the policy for a DIN not in the table."""

    entries: dict[str, tuple[str, str]]
    pattern: re.Pattern[str]
    reject_unknown: bool
    synthetic: bool

    def atc(self, din: str) -> tuple[str, str] | None:
        return self.entries.get(din)


_ATC = re.compile(r"[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?")


def valid_atc(code: str) -> bool:
    """An ATC code at any of its five levels: A, A10, A10A, A10AE, A10AE04."""
    return bool(_ATC.fullmatch(code))


@cache
def din_table() -> DinTable:
    data = load_json("din-atc.json")
    elements, policy = data.get("elements"), (data.get("unmapped") or {}).get("mode")
    if not isinstance(elements, dict) or policy not in ("accept", "reject"):
        raise _fail("din-atc", "needs elements and unmapped.mode 'accept' or 'reject'")
    try:
        pattern = re.compile(str(data.get("din_pattern", "")))
    except re.error:
        raise _fail("din-atc", "din_pattern is not a regular expression") from None
    entries: dict[str, tuple[str, str]] = {}
    for din, raw in elements.items():
        atc = raw.get("atc") if isinstance(raw, dict) else None
        if not pattern.fullmatch(din) or not isinstance(atc, str) or not valid_atc(atc):
            raise _fail("din-atc", f"entry {din}: a DIN of the pattern and a valid ATC code")
        entries[din] = (atc, str(raw.get("display", "")))
    return DinTable(entries, pattern, policy == "reject", bool(data.get("synthetic")))


@dataclass(frozen=True, slots=True)
class AtcClass:
    """A high-risk ATC class: id, ATC prefixes, French label."""

    id: str
    prefixes: tuple[str, ...]
    label: str

    def matches(self, atc: str) -> bool:
        return any(atc.startswith(p) for p in self.prefixes)


@cache
def high_risk_classes() -> tuple[AtcClass, ...]:
    items = load_json("atc-classes.json").get("high_risk")
    if not isinstance(items, list) or not items:
        raise _fail("atc-classes", "high_risk must be a non-empty list")
    out = []
    for item in items:
        prefixes = item.get("prefixes") if isinstance(item, dict) else None
        if not isinstance(prefixes, list) or not prefixes or not all(isinstance(p, str) and valid_atc(p)
                                                                     for p in prefixes):
            raise _fail("atc-classes", "every class needs ATC prefixes")
        if not isinstance(item.get("id"), str) or not isinstance(item.get("label"), str):
            raise _fail("atc-classes", "every class needs an id and a label")
        out.append(AtcClass(item["id"], tuple(prefixes), item["label"]))
    return tuple(out)


@cache
def repeat_patterns() -> tuple[dict[str, JSON], dict[str, str]]:
    """(named HL70335 code -> repeat fields, interval unit letter -> UCUM unit)."""
    data = load_json("repeat-pattern.json")
    elements, units = data.get("elements"), data.get("interval_units")
    if not isinstance(elements, dict) or not isinstance(units, dict):
        raise _fail("repeat-pattern", "needs elements and interval_units")
    allowed = {"display", "frequency", "period", "periodUnit", "when", "as_needed", "count"}
    for code, raw in elements.items():
        if not isinstance(raw, dict) or not set(raw) <= allowed:
            raise _fail("repeat-pattern", f"element {code}: unknown keys")
    return {str(k).upper(): dict(v) for k, v in elements.items()}, {str(k): str(v) for k, v in units.items()}


@cache
def time_units() -> dict[str, tuple[str, float]]:
    """Time unit as sent -> (UCUM code, length in days)."""
    elements = load_json("time-units.json").get("elements")
    if not isinstance(elements, dict):
        raise _fail("time-units", "needs elements")
    out: dict[str, tuple[str, float]] = {}
    for unit, raw in elements.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("code"), str) or \
                not isinstance(raw.get("days"), int | float):
            raise _fail("time-units", f"unit {unit}: needs code and days")
        out[unit] = (raw["code"], float(raw["days"]))
    return out


def time_unit(unit: str) -> tuple[str, float] | None:
    """UCUM code and days of a time unit as sent (exact, then lower case); None when unknown."""
    table = time_units()
    return table.get(unit) or table.get(unit.lower())


@cache
def default_authorities() -> dict[str, str]:
    data = load_json("authorities.json").get("default_systems")
    if not isinstance(data, dict) or not all(isinstance(v, str) and ":" in v for v in data.values()):
        raise _fail("authorities", "default_systems maps authorities to URIs")
    return {str(k): str(v) for k, v in data.items()}


# FHIR R4 required bindings our status tables must stay inside (checked at start-up)
_ALLOWED = {
    "order-control": {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"},
    "order-status": {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"},
    "dispense-status": {"preparation", "in-progress", "cancelled", "on-hold", "completed", "entered-in-error",
                        "stopped", "declined", "unknown"},
    "completion-status": {"in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped",
                          "unknown"},
    "priority": {"routine", "urgent", "asap", "stat"},
}


def check_all() -> None:
    """Load every table (start-up check); ConfigError on the first bad file."""
    for name in CONCEPT_MAPS:
        table = concept_map(name)
        allowed = _ALLOWED.get(name)
        targets = {t.code for t in table.elements.values()} | ({table.fallback.code} if table.fallback else set())
        if allowed is not None and not targets <= allowed:
            raise _fail(name, "a target code is outside its FHIR R4 required value set")
    route_snomed()
    messages()
    drug_systems()
    din_table()
    high_risk_classes()
    repeat_patterns()
    time_units()
    default_authorities()

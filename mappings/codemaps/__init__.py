"""Code maps as data: one JSON file per v2 table, loaded and checked once at import.

File shape (simplified ConceptMap: one group, one source table, one target system)::

    {
      "name": "patient-class",               # = file name without .json
      "source": "HL70004",                  # v2 table (documentation)
      "target": "http://terminology.hl7.org/CodeSystem/v3-ActCode",  # default target system
      "ig": "vocab/PatientClass--EncounterClass.csv",                # IG row source
      "unmapped": {"mode": "fixed", "code": "UNK", "system": "…", "display": "unknown"},
      "elements": {"E": {"code": "EMER", "display": "emergency"}, "R": {"code": "R", "system": "…"}}
    }

``unmapped.mode`` is the explicit policy for a source code that is not in ``elements``:

- ``omit``: no target (the element is left out);
- ``fixed``: the given target (``code`` + optional ``system``/``display``);
- ``text``: no coding, the source code is kept as ``CodeableConcept.text``.

Lookups are case-sensitive first, then upper-case (senders send ``f`` for ``F``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gateway.errors import ConfigError

_MODES = frozenset({"omit", "fixed", "text"})


@dataclass(frozen=True, slots=True)
class Target:
    """One mapped value: a code, its system (may be '' for plain FHIR codes) and display."""

    code: str
    system: str = ""
    display: str = ""

    def coding(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.system:
            out["system"] = self.system
        out["code"] = self.code
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class CodeMap:
    name: str
    source: str
    target: str
    mode: str
    fallback: Target | None
    elements: dict[str, Target]

    def get(self, code: str) -> Target | None:
        """Target for ``code``; the unmapped policy when absent (None for omit/text)."""
        hit = self.elements.get(code)
        if hit is None:
            hit = self.elements.get(code.upper())
        if hit is not None:
            return hit
        return self.fallback if self.mode == "fixed" else None

    def has(self, code: str) -> bool:
        return code in self.elements or code.upper() in self.elements

    def concept(self, code: str) -> dict[str, Any] | None:
        """CodeableConcept for ``code`` per the map and its policy; None when nothing to emit."""
        if not code:
            return None
        target = self.get(code)
        if target is not None:
            return {"coding": [target.coding()]}
        return {"text": code} if self.mode == "text" else None


def _target(raw: Any, default_system: str, where: str) -> Target:
    if not isinstance(raw, dict) or not isinstance(raw.get("code"), str) or not raw["code"]:
        raise ConfigError(f"code map {where}: every target needs a non-empty 'code'")
    system = raw.get("system", default_system)
    display = raw.get("display", "")
    if not isinstance(system, str) or not isinstance(display, str):
        raise ConfigError(f"code map {where}: 'system' and 'display' must be strings")
    return Target(raw["code"], system, display)


def parse_codemap(name: str, data: Any) -> CodeMap:
    """Check and build one code map (raises ConfigError naming the map)."""
    if not isinstance(data, dict):
        raise ConfigError(f"code map {name}: not a JSON object")
    target = data.get("target", "")
    policy = data.get("unmapped")
    elements = data.get("elements")
    if not isinstance(target, str) or not isinstance(policy, dict) or not isinstance(elements, dict):
        raise ConfigError(f"code map {name}: needs 'target', 'unmapped' and 'elements'")
    mode = policy.get("mode")
    if mode not in _MODES:
        raise ConfigError(f"code map {name}: unmapped.mode must be one of {sorted(_MODES)}")
    fallback = _target(policy, target, f"{name}.unmapped") if mode == "fixed" else None
    built = {str(k): _target(v, target, f"{name}.{k}") for k, v in elements.items()}
    return CodeMap(name, str(data.get("source", "")), target, str(mode), fallback, built)


def load_json(filename: str) -> Any:
    """A JSON data file shipped in this package."""
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return json.loads(text)


@cache
def codemap(name: str) -> CodeMap:
    """The code map ``<name>.json`` of this package (loaded once)."""
    return parse_codemap(name, load_json(f"{name}.json"))


ALL_CODEMAPS = (
    "administrative-sex", "patient-class", "patient-class-status", "event-encounter-status",
    "identifier-type", "relationship", "marital-status", "name-use", "address-use", "address-type",
    "telecom-use", "telecom-equipment", "diagnosis-type", "language", "admit-source", "discharge-disposition",
    "contact-role", "diagnosis-action", "encounter-priority", "mode-of-arrival",
)


def check_all() -> None:
    """Load every code map (start-up check); raises ConfigError on the first bad file."""
    for name in ALL_CODEMAPS:
        codemap(name)

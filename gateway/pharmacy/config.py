"""The medication-profile and alert policy, loaded and checked at start-up.

Data: ``mappings/pharmacy/codemaps/profile-rules.json`` (days' supply default, refill grace, the
active-drug threshold, the multi-pharmacy window and ATC class length, recipients, priorities and
the French texts) and ``atc-classes.json`` (the high-risk classes). Anything malformed raises
ConfigError naming the file (the gateway refuses to start). Tests and deployments may override a
value with :meth:`ProfilePolicy.replace`.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from typing import Any

from gateway.defisante.codes import ALL_ROLES
from gateway.errors import ConfigError
from mappings.pharmacy.codemaps import AtcClass, high_risk_classes, load_json

HIGH_RISK, ACTIVE_COUNT, MULTI_PHARMACY = "pharmacy-high-risk", "pharmacy-active-count", "pharmacy-multi-pharmacy"
KINDS = (HIGH_RISK, ACTIVE_COUNT, MULTI_PHARMACY)
_FIELDS = frozenset({"drug", "rule", "class", "count", "threshold", "pharmacies", "window", "date"})
_PRIORITIES = frozenset({"routine", "urgent", "asap", "stat"})


@dataclass(frozen=True, slots=True)
class ProfilePolicy:
    """See profile-rules.json for the meaning of each value."""

    default_days_supply: float
    grace_days: float
    active_count_threshold: int
    multi_pharmacy_window_days: float
    class_code_length: int
    recipients: tuple[str, ...]
    priority: dict[str, str]
    texts: dict[str, str]
    high_risk: tuple[AtcClass, ...]

    def text(self, kind: str, **values: str) -> str:
        return self.texts[kind].format(**{k: values.get(k, "") or "—" for k in _FIELDS})

    def replace(self, **changes: Any) -> ProfilePolicy:
        return dataclasses.replace(self, **changes)

    def high_risk_class(self, atc: str) -> AtcClass | None:
        return next((c for c in self.high_risk if atc and c.matches(atc)), None)


def _fail(why: str) -> ConfigError:
    return ConfigError(f"mappings/pharmacy/codemaps/profile-rules.json: {why}")


def _positive(data: dict[str, Any], key: str) -> float:
    raw = data.get(key)
    if not isinstance(raw, int | float) or isinstance(raw, bool) or raw < 0:
        raise _fail(f"{key} must be a number >= 0")
    return float(raw)


def _template_ok(text: Any) -> bool:
    if not isinstance(text, str) or not text:
        return False
    try:
        names = {n for _lit, n, _spec, _conv in string.Formatter().parse(text) if n is not None}
    except ValueError:
        return False
    return names <= _FIELDS


def load_policy() -> ProfilePolicy:
    """Read and check profile-rules.json and atc-classes.json."""
    data = load_json("profile-rules.json")
    if not isinstance(data, dict):
        raise _fail("must be an object")
    threshold, length = data.get("active_count_threshold"), data.get("class_code_length")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise _fail("active_count_threshold must be an integer >= 1")
    if length not in (1, 3, 4, 5, 7):
        raise _fail("class_code_length must be an ATC level length: 1, 3, 4, 5 or 7")
    recipients = data.get("recipients")
    if not isinstance(recipients, list) or not recipients or not set(recipients) <= ALL_ROLES:
        raise _fail(f"recipients: a non-empty list of {', '.join(sorted(ALL_ROLES))}")
    priority, texts = data.get("priority"), data.get("texts")
    if not isinstance(priority, dict) or set(priority) != set(KINDS) or not set(priority.values()) <= _PRIORITIES:
        raise _fail(f"priority gives one of {', '.join(sorted(_PRIORITIES))} for every kind")
    if not isinstance(texts, dict) or set(texts) != set(KINDS) or not all(_template_ok(t) for t in texts.values()):
        raise _fail(f"texts gives a template for every kind, with fields among {', '.join(sorted(_FIELDS))}")
    return ProfilePolicy(
        default_days_supply=_positive(data, "default_days_supply") or 30.0,
        grace_days=_positive(data, "grace_days"),
        active_count_threshold=threshold,
        multi_pharmacy_window_days=_positive(data, "multi_pharmacy_window_days"),
        class_code_length=int(length),
        recipients=tuple(recipients),
        priority=dict(priority),
        texts=dict(texts),
        high_risk=high_risk_classes(),
    )

"""SMART v2 system scopes: parse a scope string, decide whether it permits one access.

    system/Patient.rs        read + search Patient
    system/CarePlan.cruds    everything on CarePlan
    system/*.rs              read + search every FHIR resource type
    system/hl7v2.c           send HL7v2 (POST /hl7v2)
    system/defi-sante.write  Défi Santé case-manager operations ($defi-sante-enroll, -disenroll)
    system/metrics.r         GET /metrics

Letters are SMART v2 (c create, r read, u update, d delete, s search); the v1 suffixes ``read``
(= rs), ``write`` (= cud) and ``*`` (= cruds) are accepted. ``*`` names every FHIR resource type
but AuditEvent (``system/AuditEvent.rs``: the audit trail, a privacy officer's) and none of the
pseudo-resources above (``hl7v2``, ``defi-sante``, ``metrics``): those are granted only by name.
Scopes with a query (``system/Observation.rs?category=…``), and ``user/``
or ``patient/`` scopes, grant nothing here (no user or patient context on this server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INTERACTION_LETTERS = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}
PSEUDO_RESOURCES = frozenset({"hl7v2", "defi-sante", "metrics"})
# FHIR types that ``*`` does not name either: the audit trail says who looked at which client (a
# privacy officer's record), so ``system/AuditEvent.rs`` is granted only by name
NAMED_ONLY = PSEUDO_RESOURCES | {"AuditEvent"}
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"system/(?P<rtype>\*|[A-Za-z][A-Za-z0-9-]*)\.(?P<perm>[cruds]+|read|write|\*)")


@dataclass(frozen=True, slots=True)
class Scope:
    """One parsed ``system/<resource>.<permissions>`` scope."""

    rtype: str
    letters: frozenset[str]

    def permits(self, rtype: str, letter: str) -> bool:
        if letter not in self.letters:
            return False
        if self.rtype == "*":
            return rtype not in NAMED_ONLY
        return self.rtype == rtype


def parse_scope(text: str) -> Scope | None:
    """``system/Patient.rs`` → Scope; None for anything this server does not grant on."""
    match = _SCOPE.fullmatch(text.strip())
    if match is None:
        return None
    perm = match.group("perm")
    letters = _V1.get(perm, perm)
    if perm not in _V1 and list(letters) != sorted(letters, key="cruds".index):
        return None  # SMART v2: letters in the order c r u d s, each at most once
    if len(set(letters)) != len(letters):
        return None
    return Scope(match.group("rtype"), frozenset(letters))


def parse_scopes(texts: str | list[str] | tuple[str, ...]) -> tuple[Scope, ...]:
    """A space-separated scope string (or a list of scopes) → the scopes that grant something."""
    items = texts.split() if isinstance(texts, str) else list(texts)
    return tuple(s for s in (parse_scope(t) for t in items) if s is not None)


def permits(scopes: tuple[Scope, ...], rtype: str, interaction: str) -> bool:
    """True when one of ``scopes`` grants ``interaction`` (read, search, create…) on ``rtype``."""
    letter = INTERACTION_LETTERS.get(interaction, interaction)
    return any(scope.permits(rtype, letter) for scope in scopes)


def required_scope(rtype: str, interaction: str) -> str:
    """The narrowest scope that would permit this access (for error messages)."""
    return f"system/{rtype}.{INTERACTION_LETTERS.get(interaction, interaction)}"


def narrow(requested: str, granted: tuple[str, ...]) -> list[str]:
    """The requested scopes a client may have: those its registration's scopes cover entirely."""
    allowed = parse_scopes(granted)
    out: list[str] = []
    for text in requested.split():
        scope = parse_scope(text)
        if scope is None:
            continue
        if all(any(g.permits(scope.rtype, letter) for g in allowed) for letter in scope.letters):
            out.append(text)
    return out

"""The rows of the identity index (gateway/eventlog/state/identity.py) as Python values, and what
one transaction keeps of them (:class:`Seen`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.eventlog.state.db import Row

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Person:
    """A person row: ``survivor`` None while active."""

    id: str
    key: str
    nam: str | None
    survivor: str | None


@dataclass(frozen=True, slots=True)
class Stored:
    """The last published version of a resource that belongs to ``person``."""

    rtype: str
    id: str
    person: str
    event_ms: int
    body: JSON
    times: dict[str, int] | None = None  # per element; None: keep what is stored (a re-publication)


@dataclass(frozen=True, slots=True)
class Pair:
    """A possible-duplicate pair (``id`` is the Flag id)."""

    id: str
    a: str
    b: str
    active: bool


dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
"""A stored body's JSON text (compact, UTF-8 kept); the encoder built once, not per call as by json.dumps,
without the cycle check (~20% of its time; JSON read or mapped has no cycles)."""
dump_times = json.JSONEncoder(separators=(",", ":")).encode
"""The element times' JSON text (the same text ``json.dumps(times, separators=(",", ":"))`` gives)."""


@dataclass(slots=True)
class Seen:
    """Rows this transaction read or wrote, as stored (JSON as text: every read decodes a fresh
    copy). Valid while the lock is held, so nobody else writes them; dropped at the end."""

    persons: dict[str, Person | None] = field(default_factory=dict)
    keys: dict[str, str | None] = field(default_factory=dict)  # identity key → person
    idents: dict[str, dict[str, tuple[bool, str]]] = field(default_factory=dict)  # person → all of its rows
    resources: dict[tuple[str, str], tuple[str, int, str, str | None] | None] = field(default_factory=dict)
    owned: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # person → all of its resource rows
    members: dict[str, tuple[str, bool, bool] | None] = field(default_factory=dict)  # person → cluster row
    pending: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)  # writes not sent yet, in order


def pairs_of(rows: list[Row]) -> list[Pair]:
    return sorted((Pair(str(i), str(a), str(b), bool(act)) for i, a, b, act in rows), key=lambda p: p.id)

"""Required structure (issue #12 item 4): the segments and fields a message structure requires.

The table is data (codemaps/required-structure.json), loaded and checked at import. The gateway
calls :func:`check_structure` right after parsing (before the message is stored, so an enhanced
mode sender gets a commit error CE), once (gateway/pipeline.py); :func:`mappings.map_message`
calls it too unless told ``structure_checked``, so that every path that maps refuses the same
messages.

- a missing segment: StructureError, ERR-3 100 (segment sequence error), ERR-2 ``SEG^1``;
- a required field empty (or the HL7 null ``""``) in any occurrence of its segment: ERR-3 101
  (required field missing), ERR-2 ``SEG^n^field``;
- a requirement waived by a segment present (``waived_by``: the pharmacy profile ZPR), or relaxed
  by the sender's profile (``relax``, only what ``relaxable`` allows) is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError, Location, StructureError
from gateway.hl7v2.tokenizer import Message, Segment
from mappings.codemaps import load_json

_BLANK = str.maketrans("", "", " \t")


@dataclass(frozen=True, slots=True)
class Requirements:
    """One structure's requirements: segments, (segment, field) pairs, and segment -> what it waives."""

    name: str
    segments: tuple[str, ...]
    fields: tuple[tuple[str, int], ...]
    waived_by: dict[str, frozenset[str]]


def _field(item: Any, where: str) -> tuple[str, int]:
    seg, _, num = str(item).partition("-")
    if len(seg) != 3 or not num.isdigit() or int(num) < 1:
        raise ConfigError(f"required-structure.json {where}: bad field {item!r} (SEG-n)")
    return seg, int(num)


def _structure(name: str, raw: Any) -> Requirements:
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in ("segments", "fields")):
        raise ConfigError(f"required-structure.json {name}: needs 'segments' and 'fields' lists")
    segments = tuple(str(s) for s in raw["segments"])
    if any(len(s) != 3 for s in segments):
        raise ConfigError(f"required-structure.json {name}: a segment id is not 3 characters")
    fields = tuple(_field(f, name) for f in raw["fields"])
    waived = raw.get("waived_by", {})
    if not isinstance(waived, dict) or not all(isinstance(v, list) for v in waived.values()):
        raise ConfigError(f"required-structure.json {name}: 'waived_by' maps a segment to a list")
    return Requirements(name, segments, fields, {str(k): frozenset(map(str, v)) for k, v in waived.items()})


def _load() -> tuple[dict[str, Requirements], dict[str, frozenset[str]]]:
    data = load_json("required-structure.json")
    structures, relaxable = data.get("structures"), data.get("relaxable")
    if not isinstance(structures, dict) or not isinstance(relaxable, dict):
        raise ConfigError("required-structure.json: needs 'structures' and 'relaxable'")
    table = {str(k): _structure(str(k), v) for k, v in structures.items()}
    allowed: dict[str, frozenset[str]] = {}
    for item, triggers in relaxable.items():
        if not isinstance(triggers, list) or not triggers:
            raise ConfigError(f"required-structure.json relaxable {item}: a list of triggers ('*' = any)")
        allowed[str(item)] = frozenset(str(t).upper() for t in triggers)
    return table, allowed


REQUIRED, RELAXABLE = _load()


def check_relax(items: list[str], where: str) -> frozenset[str]:
    """A sender profile's ``relax`` list, checked against ``relaxable``: ``EVN`` (any trigger) or
    ``A31:PV1`` (that trigger only). ConfigError naming the profile otherwise."""
    out = set()
    for item in items:
        trigger, _, what = str(item).upper().rpartition(":")
        allowed = RELAXABLE.get(what)
        if allowed is None or (trigger and "*" not in allowed and trigger not in allowed) or \
                (not trigger and "*" not in allowed):
            raise ConfigError(f"sender profile {where}: {item!r} cannot be relaxed (required-structure.json)")
        out.add(f"{trigger}:{what}" if trigger else what)
    return frozenset(out)


def structure_checks() -> None:
    """Start-up check: every structure a supported trigger names has requirements."""
    from mappings.messages.tables import SUPPORTED
    from mappings.pharmacy import PHARMACY_TRIGGERS

    for table in (SUPPORTED, PHARMACY_TRIGGERS):
        for triggers in table.values():
            for structure in triggers.values():
                if structure not in REQUIRED:
                    raise ConfigError(f"required-structure.json: no requirements for structure {structure}")


def _valued(seg: Segment, n: int) -> bool:
    """Field n carries something other than delimiters and the HL7 null ``""``."""
    text = seg.raw(n)
    if text.isalnum():  # the common case (PV1-2 ``E``, EVN-2 a timestamp): valued
        return True
    text = text.translate(_BLANK)
    d = seg.d
    for sep in (d.component, d.subcomponent, d.repetition):
        text = text.replace(sep, "")
    return bool(text) and text != '""' * (len(text) // 2)


def _relaxed(relax: frozenset[str], trigger: str, what: str) -> bool:
    return what in relax or f"{trigger}:{what}" in relax


def check_structure(msg: Message, structure: str, trigger: str, relax: frozenset[str] = frozenset()) -> None:
    """Raise StructureError when ``msg`` lacks a segment or field ``structure`` requires."""
    rules = REQUIRED.get(structure)
    if rules is None:
        return
    present: dict[str, list[Segment]] = {}
    for seg in msg.segments:
        present.setdefault(seg.id, []).append(seg)
    waived: frozenset[str] = frozenset()
    for sid, what in rules.waived_by.items():
        if sid in present:
            waived = waived | what
    for sid in rules.segments:
        if sid not in present and sid not in waived and not _relaxed(relax, trigger, sid):
            raise StructureError(f"required segment {sid} missing", hl7_code="100", location=Location(sid, 1))
    for sid, n in rules.fields:
        if _relaxed(relax, trigger, f"{sid}-{n}"):
            continue
        for seq, seg in enumerate(present.get(sid, ()), start=1):
            if not _valued(seg, n):
                raise StructureError(f"required field {sid}-{n} missing", hl7_code="101",
                                     location=Location(sid, seq, n))

"""Strict diagnostics for a rejected message: what hl7apy's HL7 knowledge says is wrong with it.

Called only for messages already refused (never on the hot path), to add detail to the dead-letter
reason. :func:`diagnose` returns ``(location, problem)`` pairs such as ``("PID-3", "required field
missing")`` or ``("PV1-2", "value not in HL7 table 0004 (warning)")`` and never raises.

How: our tokenizer first (an unreadable message gets its ParseError and nothing else); then hl7apy
(``find_groups=False``) segment by segment, each validated strictly against its version's
definition (required fields, data types, lengths, tables); then the message structure with
``find_groups=True`` (segment order and cardinality; Z-segments and unknown segments left out).

No health data: problems are built from templates filled with element names, positions, table
ids and limits parsed out of hl7apy's reports; hl7apy's own texts (which quote values) are never
passed on. At most :data:`MAX_PROBLEMS` pairs; input beyond :data:`MAX_CHARS` is not examined.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import ParseError
from gateway.hl7v2.tokenizer import parse_text, split_segments

MAX_PROBLEMS = 50
MAX_CHARS = 256 * 1024
MAX_SEGMENTS = 500
FALLBACK_VERSION = "2.5.1"

_NAME = r"[A-Za-z0-9_]+"
# hl7apy validation report lines → (regex, builder(match) -> (parent, child, problem))
_REPORT: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, str, str]]]] = [
    (re.compile(rf"Missing required child ({_NAME})\.({_NAME})"),
     lambda m: (m[1], m[2], "required element missing")),
    (re.compile(rf"Child limit exceeded ({_NAME})\.({_NAME})"),
     lambda m: (m[1], m[2], "too many repetitions")),
    (re.compile(rf"Datatype \S+ is not correct for ({_NAME})\.({_NAME})"),
     lambda m: (m[1], m[2], "data type error")),
    (re.compile(rf"not in table HL7?(\d+) in element ({_NAME})\.({_NAME})$"),
     lambda m: (m[2], m[3], f"value not in HL7 table {m[1]} (warning)")),
    (re.compile(rf"Exceeded max length \((\d+)\) of ({_NAME})\.({_NAME})"),
     lambda m: (m[2], m[3], f"value longer than {m[1]} (warning)")),
    (re.compile(rf"Unknown element found: <\w+ ({_NAME})"),
     lambda m: ("", m[1], "content beyond the element's definition")),
    (re.compile(rf"Invalid children detected for <\w+ ({_NAME})>: \[(.*)\]"),
     lambda m: (m[1], ",".join(re.findall(r"'(\w+)'", m[2])), "unexpected element")),
]
_FIELD = re.compile(r"([A-Z][A-Z0-9]{2})_(\d+)$")
_COMPONENT = re.compile(r"[A-Z][A-Z0-9_]*_(\d+)$")


def diagnose(text: str) -> list[tuple[str, str]]:
    """(location, problem) pairs for a rejected message; [] when nothing more is known. Never raises."""
    problems: list[tuple[str, str]] = []
    try:
        _diagnose(text, problems)
    except Exception:  # noqa: BLE001 - diagnostics must never raise
        problems.append(("message", "diagnostics incomplete (internal error)"))
    return list(dict.fromkeys(problems))[:MAX_PROBLEMS]


def _diagnose(text: str, problems: list[tuple[str, str]]) -> None:
    if len(text) > MAX_CHARS:
        problems.append(("message", f"only the first {MAX_CHARS} characters examined"))
        text = text[:MAX_CHARS]
    try:
        msg = parse_text(text)
    except ParseError as exc:
        loc = exc.location
        where = "message" if loc is None else str(loc) if loc.segment else f"segment {loc.sequence}"
        problems.append((where, exc.message))
        return
    lines = split_segments(text)[:MAX_SEGMENTS]
    d = msg.d
    # hl7apy wants CR terminators and standard-length MSH-2 (the '^~\\&' quirk is normalised)
    lines[0] = f"MSH{d.field}{d.component}{d.repetition}{d.escape}{d.subcomponent}{d.field}" \
        + d.field.join(msg.msh.fields[2:])
    from hl7apy import SUPPORTED_LIBRARIES, consts
    from hl7apy.parser import get_message_info, parse_message, parse_segment

    encoding, _structure, version = get_message_info("\r".join(lines[:1]))
    if version not in SUPPORTED_LIBRARIES:
        problems.append(("MSH-12", f"version not known to hl7apy: checked as {FALLBACK_VERSION}"))
        version = FALLBACK_VERSION
    tolerant = consts.VALIDATION_LEVEL.TOLERANT
    kept: list[str] = []
    ids = {line[:3] for line in lines}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="pivot-diag-") as tmp:
        report = Path(tmp) / "report.txt"
        for line in lines:
            sid = line[:3]
            counts[sid] = counts.get(sid, 0) + 1
            tag = sid if counts[sid] == 1 else f"{sid}({counts[sid]})"
            if sid.startswith("Z"):
                continue
            try:
                segment = parse_segment(line, version, encoding, tolerant)
            except Exception:  # noqa: BLE001 - hl7apy raises many types for an unknown segment
                problems.append((tag, f"segment not defined in HL7 v{version}"))
                continue
            kept.append(line)
            _validate(segment, report, tag, problems, ids)
        try:
            message = parse_message("\r".join(kept), validation_level=tolerant, find_groups=True)
        except Exception:  # noqa: BLE001
            problems.append(("message", "structure not checked: message type unknown to hl7apy"))
            return
        # segment-level findings are already reported: keep message/group-level ones only
        _validate(message, report, "", problems, ids, structure_only=True)


def _validate(element: Any, report: Path, tag: str, problems: list[tuple[str, str]], ids: set[str],
              structure_only: bool = False) -> None:
    from hl7apy.validation import Validator

    report.unlink(missing_ok=True)
    # the report file holds every finding; the exception raised only the first
    with contextlib.suppress(Exception):
        Validator.validate(element, report_file=str(report))
    if not report.exists():
        return
    for line in report.read_text(encoding="utf-8", errors="replace").splitlines():
        for pattern, build in _REPORT:
            found = pattern.search(line)
            if found is None:
                continue
            parent, child, problem = build(found)
            if not structure_only:
                problems.append((_where(tag, parent, child, ids), problem))
            elif parent and parent not in ids and not _FIELD.match(parent):  # the message or a group
                problems.append((child or parent, problem))
            break
        else:
            if line.startswith("Error") and not structure_only:
                problems.append((tag or "message", "invalid (hl7apy validation)"))


def _where(tag: str, parent: str, child: str, ids: set[str]) -> str:
    """HL7 location from hl7apy element names: PID+PID_3 → PID-3, NK1_3+CE_3 → NK1-3.3."""
    field = _FIELD.match(child)
    if parent in ids and field is not None:
        return f"{tag or field[1]}-{field[2]}"
    parent_field = _FIELD.match(parent)
    if parent_field is not None and parent_field[1] in ids:
        comp = _COMPONENT.match(child)
        return f"{tag or parent_field[1]}-{parent_field[2]}" + (f".{comp[1]}" if comp is not None else "")
    if field is not None and field[1] in ids:
        return f"{tag or field[1]}-{field[2]}"
    return tag or child or parent or "message"

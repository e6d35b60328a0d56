"""FHIR date, dateTime and instant values as ranges of epoch milliseconds.

A value stands for the whole interval its precision implies (``2026-03`` is all of March), so
every value becomes an inclusive range ``(lo, hi)`` in milliseconds since the epoch, UTC. Values
without a time zone (dates, and dateTimes sent without one in search values) are read as UTC.
Open period bounds are :data:`MIN_MS` / :data:`MAX_MS`.

Search prefixes follow the R4 definitions (search.html#prefix), with S the range of the search
value and R the range of the resource value:

    eq  R within S            ne  not (R within S)
    gt  R ends after S        lt  R starts before S
    ge  gt, or R within S     le  lt, or R within S
    sa  R starts after S      eb  R ends before S       ap  R overlaps S
"""

from __future__ import annotations

import re
from calendar import monthrange
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

MIN_MS = -(2**62)
MAX_MS = 2**62
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _tz(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("time zone offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def date_range(text: str) -> tuple[int, int]:
    """The inclusive millisecond range that a FHIR date/dateTime/instant stands for.

    Raises ``ValueError`` for anything else (the message never repeats the value).
    """
    match = _DATE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a FHIR date, dateTime or instant")
    g: dict[str, Any] = match.groupdict()
    year = int(g["y"])
    if g["m"] is None:
        start = datetime(year, 1, 1, tzinfo=UTC)
        end = datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else datetime.max.replace(tzinfo=UTC)
        return _ms(start), _ms(end) - 1
    month = int(g["m"])
    if g["d"] is None:
        start = datetime(year, month, 1, tzinfo=UTC)
        return _ms(start), _ms(start + timedelta(days=monthrange(year, month)[1])) - 1
    day = int(g["d"])
    if g["H"] is None:
        start = datetime(year, month, day, tzinfo=UTC)
        return _ms(start), _ms(start + timedelta(days=1)) - 1
    tz = _tz(g["tz"])
    seconds = 0 if g["S"] is None else int(g["S"])
    start = datetime(year, month, day, int(g["H"]), int(g["M"]), min(seconds, 59), tzinfo=tz)
    if g["S"] is None:
        return _ms(start), _ms(start + timedelta(minutes=1)) - 1
    if g["f"] is None:
        return _ms(start), _ms(start + timedelta(seconds=1)) - 1
    digits = g["f"][:3]
    lo = _ms(start) + int(digits.ljust(3, "0"))
    return lo, lo + 10 ** (3 - len(digits)) - 1


def period_range(period: dict[str, Any]) -> tuple[int, int]:
    """The range of a FHIR Period (a missing start or end is open)."""
    start, end = period.get("start"), period.get("end")
    lo = date_range(start)[0] if isinstance(start, str) else MIN_MS
    hi = date_range(end)[1] if isinstance(end, str) else MAX_MS
    return lo, hi


def split_prefix(value: str) -> tuple[str, str]:
    """``"ge2026-03-01"`` → ``("ge", "2026-03-01")``; no prefix means ``eq``."""
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def sql_condition(prefix: str, lo_col: str, hi_col: str, lo: int, hi: int) -> tuple[str, list[int]]:
    """SQL (with ``?`` placeholders, and their arguments) comparing a resource range held in
    columns ``lo_col``/``hi_col`` with the search range ``lo``..``hi`` under ``prefix``."""
    within = (f"({lo_col} >= ? AND {hi_col} <= ?)", [lo, hi])
    conditions: dict[str, tuple[str, list[int]]] = {
        "eq": within,
        "ne": (f"NOT {within[0]}", [lo, hi]),
        "gt": (f"{hi_col} > ?", [hi]),
        "lt": (f"{lo_col} < ?", [lo]),
        "ge": (f"({hi_col} > ? OR {within[0]})", [hi, lo, hi]),
        "le": (f"({lo_col} < ? OR {within[0]})", [lo, lo, hi]),
        "sa": (f"{lo_col} > ?", [hi]),
        "eb": (f"{hi_col} < ?", [lo]),
        "ap": (f"({lo_col} <= ? AND {hi_col} >= ?)", [hi, lo]),
    }
    return conditions[prefix]


def instant_text(ms: int) -> str:
    """An instant as FHIR text, UTC with milliseconds: ``2026-03-01T14:05:09.120Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def start_ms(text: object) -> int | None:
    """The start of a FHIR date/dateTime/instant in epoch ms; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return date_range(text)[0]
    except ValueError:
        return None

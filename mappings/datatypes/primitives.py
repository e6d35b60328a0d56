"""Primitive helpers: HL7 nulls, and DTM/TS -> FHIR date / dateTime / instant.

IG rows: datatypes/DTM--dateTime.csv, TS--dateTime.csv. The source precision is kept:
``YYYY`` -> ``YYYY``, ``YYYYMM`` -> ``YYYY-MM``, ``YYYYMMDD`` -> ``YYYY-MM-DD``; with a time, FHIR
needs minutes, seconds and an offset: ``HH`` and ``HHMM`` are padded with ``:00``, and the
profile's time zone gives the offset when the source has none (DST-aware; an ambiguous local time
takes the first occurrence, fold=0). Tolerated quirk: fraction digits right after the seconds
without the dot (``20110613122406637``).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from gateway.errors import Location, MapError

HL7_NULL = '""'

_DTM = re.compile(
    r"(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})"
    r"(?:\.?(?P<f>\d{1,4}))?)?)?)?)?)?(?P<tz>[+-]\d{4})?"
)


# whitespace other than space, CR, LF, TAB (NBSP, form feed, U+2028…) is not allowed in a FHIR string
_ODD_SPACE = re.compile(r"[^\S \r\n\t]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def value(text: str) -> str:
    """A component's value with the HL7 null ``""`` read as absent, surrounding blanks removed,
    odd whitespace (NBSP, form feed…) read as a space and control characters dropped."""
    if not text:  # most components asked for are absent
        return text
    if not text.isprintable():
        text = _CONTROL.sub("", _ODD_SPACE.sub(" ", text))
    text = text.strip()
    return "" if text == HL7_NULL else text


class BadTimestamp(ValueError):
    """A DTM that cannot be read (callers turn it into a MapError naming the field)."""


def _parts(text: str) -> re.Match[str]:
    m = _DTM.fullmatch(text)
    if m is None:
        raise BadTimestamp("not an HL7 DTM")
    try:
        date(int(m["y"]), int(m["mo"] or 1), int(m["d"] or 1))
    except ValueError:
        raise BadTimestamp("impossible date") from None
    if int(m["h"] or 0) > 23 or int(m["mi"] or 0) > 59 or int(m["s"] or 0) > 59:
        raise BadTimestamp("impossible time")
    tz = m["tz"]
    if tz and (int(tz[1:3]) > 14 or int(tz[3:5]) > 59):
        raise BadTimestamp("impossible offset")
    return m


def _offset(m: re.Match[str], zone: ZoneInfo) -> str:
    tz = m["tz"]
    if tz:
        return f"{tz[:3]}:{tz[3:]}"
    local = datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"] or 0), int(m["mi"] or 0),
                     int(m["s"] or 0), tzinfo=zone)
    off = local.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def to_datetime(text: str, zone: ZoneInfo) -> str:
    """FHIR dateTime at the source precision (see module doc); raises BadTimestamp."""
    m = _parts(text)
    out = m["y"]
    if m["mo"]:
        out += f"-{m['mo']}"
        if m["d"]:
            out += f"-{m['d']}"
            if m["h"]:
                out += f"T{m['h']}:{m['mi'] or '00'}:{m['s'] or '00'}"
                if m["f"]:
                    out += f".{m['f']}"
                out += _offset(m, zone)
    return out


def to_date(text: str) -> str:
    """FHIR date (the date part of a DTM, at its precision); raises BadTimestamp."""
    m = _parts(text)
    out = m["y"]
    if m["mo"]:
        out += f"-{m['mo']}"
        if m["d"]:
            out += f"-{m['d']}"
    return out


def to_instant(text: str, zone: ZoneInfo) -> str:
    """FHIR instant: needs a full date and time; a missing time or part is padded with zeros."""
    m = _parts(text)
    if not (m["mo"] and m["d"]):
        raise BadTimestamp("an instant needs year, month and day")
    padded = f"{m['y']}{m['mo']}{m['d']}{m['h'] or '00'}{m['mi'] or '00'}{m['s'] or '00'}"
    if m["f"]:
        padded += f".{m['f']}"
    return to_datetime(padded + (m["tz"] or ""), zone)


def has_time(text: str) -> bool:
    """True when the DTM carries at least an hour."""
    m = _DTM.fullmatch(text)
    return bool(m and m["h"])


@lru_cache(maxsize=1024)
def convert(text: str, zone: ZoneInfo, kind: str = "dateTime") -> str:
    """One DTM value as ``kind`` (date, dateTime, instant); raises BadTimestamp. Memoized (a pure
    function of its arguments, a str result): a message repeats its timestamps (EVN, PV1-44, MSH-7…)."""
    if kind == "date":
        return to_date(text)
    if kind == "instant":
        return to_instant(text, zone)
    return to_datetime(text, zone)


def unreadable(exc: BadTimestamp, where: Location) -> MapError:
    """The MapError 102 of a DTM that cannot be read, at ``where``."""
    return MapError(f"unreadable date/time ({exc})", hl7_code="102", location=where)


def dtm(text: str, zone: ZoneInfo, where: Location, kind: str = "dateTime") -> str:
    """Convert one DTM field value to ``kind`` (date, dateTime, instant): MapError 102 at ``where``."""
    try:
        return convert(text, zone, kind)
    except BadTimestamp as exc:
        raise unreadable(exc, where) from None

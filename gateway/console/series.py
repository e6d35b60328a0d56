"""Month series for the before/after charts (months as the sites wrote the dates: ``YYYY-MM``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from gateway.defisante.codes import JSON
from gateway.defisante.outcomes import enrollment_ms, is_since
from gateway.defisante.register import Visit


def month_index(text: str) -> int | None:
    """``2025-03-…`` → months since year 0 (None when unreadable)."""
    if len(text) < 7 or not text[:4].isdigit() or text[4] != "-" or not text[5:7].isdigit():
        return None
    month = int(text[5:7])
    return int(text[:4]) * 12 + month - 1 if 1 <= month <= 12 else None


def month_text(index: int) -> str:
    year, month = divmod(index, 12)
    return f"{year:04d}-{month + 1:02d}"


def _since(visit: Visit, start_ms: int | None) -> bool:
    """After the enrollment, at the visit's own precision (the outcomes' rule)."""
    return start_ms is not None and is_since(visit.arrival, start_ms)


def monthly(visits: Iterable[Visit], first: int, last: int, enrolled: str = "") -> list[JSON]:
    """ER visits per month from ``first`` to ``last`` (month indexes); the enrollment's month is split
    at the enrollment into two entries (``part`` before / after), so a visit of that month before the
    enrollment is drawn as before, and ``after`` marks what the outcomes count as since."""
    start = month_index(enrolled) if enrolled else None
    start_ms = enrollment_ms(enrolled) if enrolled else None
    items = list(visits)
    counts = Counter(m for v in items if (m := month_index(v.arrival)) is not None)
    split = Counter(_since(v, start_ms) for v in items if start is not None and month_index(v.arrival) == start)
    out: list[JSON] = []
    for m in range(first, last + 1):
        if m == start:
            out += [{"month": month_text(m), "visits": split.get(False, 0), "after": False, "part": "before"},
                    {"month": month_text(m), "visits": split.get(True, 0), "after": True, "part": "after"}]
        else:
            out.append({"month": month_text(m), "visits": counts.get(m, 0), "after": start is not None and m > start})
    return out


def relative(cohort: list[tuple[str, int, list[Visit]]], before: int = 12, after: int = 12) -> list[JSON]:
    """The cohort's ER visits per month relative to each client's enrollment month (−12 … +12), the
    enrollment month split at the enrollment (two entries at offset 0, ``part`` before / after).

    ``cohort``: (enrollment dateTime, last month followed, visits) per compared client; ``clients``
    counts those observed that month (a month after the end of follow-up is not observed), and
    ``rate`` is visits per client observed, so clients followed for different lengths compare.
    """
    counted: list[tuple[int, int, int | None, Counter[int | None], list[Visit]]] = []
    for enrolled, last, items in cohort:
        start = month_index(enrolled)
        if start is not None:
            counted.append((start, last, enrollment_ms(enrolled), Counter(month_index(v.arrival) for v in items),
                            items))
    out: list[JSON] = []
    for offset in range(-before, after + 1):
        for part in (("before", "after") if offset == 0 else ("",)):
            visits = clients = 0
            for start, last, start_ms, counts, items in counted:
                month = start + offset
                if month > last:
                    continue
                clients += 1
                if part:
                    visits += sum(1 for v in items if month_index(v.arrival) == month
                                  and _since(v, start_ms) == (part == "after"))
                else:
                    visits += counts.get(month, 0)
            entry: JSON = {"offset": offset, "visits": visits, "clients": clients,
                           "rate": round(visits / clients, 3) if clients else None, "after": offset > 0 or
                           part == "after"}
            if part:
                entry["part"] = part
            out.append(entry)
    return out

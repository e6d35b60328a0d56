"""Month series for the before/after charts (months as the sites wrote the dates: ``YYYY-MM``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from gateway.defisante.codes import JSON
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


def monthly(visits: Iterable[Visit], first: int, last: int, start: int | None) -> list[JSON]:
    """ER visits per month from ``first`` to ``last`` (month indexes); ``after`` from the month of
    ``start`` (the enrollment) on."""
    counts = Counter(m for v in visits if (m := month_index(v.arrival)) is not None)
    return [{"month": month_text(m), "visits": counts.get(m, 0), "after": start is not None and m >= start}
            for m in range(first, last + 1)]


def relative(cohort: list[tuple[int, int, list[Visit]]], before: int = 12, after: int = 12) -> list[JSON]:
    """The cohort's ER visits per month relative to each client's enrollment month (−12 … +12).

    ``cohort``: (enrollment month, last month followed, visits) per client; ``clients`` counts
    those observed that month (a month after the end of follow-up is not observed), and ``rate``
    is visits per client observed, so clients followed for different lengths compare.
    """
    counted = [(start, last, Counter(month_index(v.arrival) for v in items)) for start, last, items in cohort]
    out: list[JSON] = []
    for offset in range(-before, after + 1):
        visits = clients = 0
        for start, last, counts in counted:
            month = start + offset
            if month > last:
                continue
            clients += 1
            visits += counts.get(month, 0)
        out.append({"offset": offset, "visits": visits, "clients": clients,
                    "rate": round(visits / clients, 3) if clients else None})
    return out

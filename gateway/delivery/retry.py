"""Backoff policy of the delivery client: exponential with full jitter, capped; ``Retry-After`` wins."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

BASE_DELAY_S = 0.2


def backoff_s(attempt: int, cap_s: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    ceiling = min(cap_s, BASE_DELAY_S * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0.0, ceiling)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def next_delay_s(attempt: int, cap_s: float, retry_after: float | None) -> float:
    """The wait before the next attempt: the server's Retry-After (capped), else jittered backoff."""
    if retry_after is not None:
        return min(retry_after, cap_s)
    return backoff_s(attempt, cap_s)

"""Server-sent events of new alerts (``GET /console/api/alerts/stream``).

    id: <store version sequence>      the cursor (alerts.py); a reconnect sends it as Last-Event-ID
    event: alert
    data: {"id", "kind", "priority", "patient"}   ids only: the page reads the alert itself through
                                                   GET /console/api/alerts/{id} (an audited read)

The stream polls the store's version sequence (one indexed query a second), so it also sees
alerts written by another process sharing the store. It ends after ``max_s`` seconds (15 by
default) and the page reconnects at once with Last-Event-ID (nothing is missed): uvicorn waits for
open responses when it shuts down, so an endless stream would hold a shutdown forever. A comment
line every ``keepalive_s`` keeps proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

from gateway.console.alerts import Alert, alerts_after, latest_seq
from gateway.fhirstore import FhirStore


def cursor_of(last_event_id: str | None, after: str | None) -> int | None:
    """The resume point a client gave (Last-Event-ID header, else ``?after=``), None when none."""
    for text in (last_event_id, after):
        if text and text.strip().isdigit():
            return int(text.strip())
    return None


def _seen(store: FhirStore, seq: int, visible: Callable[[str], bool]) -> tuple[list[tuple[int, Alert]], int]:
    events, cursor = alerts_after(store, seq)
    return [(n, a) for n, a in events if visible(a.patient_id)], cursor


async def alert_events(get_store: Callable[[], FhirStore], cursor: int | None, *, poll_s: float = 1.0,
                       max_s: float = 15.0, keepalive_s: float = 15.0,
                       visible: Callable[[str], bool] = lambda _pid: True) -> AsyncIterator[bytes]:
    """The SSE body (see the module docstring); ``visible``: the clients the caller sees (the others'
    alerts are skipped, the cursor still moves past them)."""
    store = get_store()
    seq: int = await run_in_threadpool(latest_seq, store) if cursor is None else cursor
    yield f"retry: 1000\nid: {seq}\nevent: ready\ndata: {{}}\n\n".encode()
    started = quiet = time.monotonic()
    while time.monotonic() - started < max_s:
        events, seq = await run_in_threadpool(_seen, store, seq, visible)
        for seq, alert in events:
            data = json.dumps({"id": alert.id, "kind": alert.kind, "priority": alert.priority,
                               "patient": alert.patient_id}, separators=(",", ":"))
            yield f"id: {seq}\nevent: alert\ndata: {data}\n\n".encode()
            quiet = time.monotonic()
        if time.monotonic() - quiet >= keepalive_s:
            yield b": keepalive\n\n"
            quiet = time.monotonic()
        await asyncio.sleep(poll_s)

"""Where AuditEvents go: ``audit.sqlite`` under the data dir (0600), then the ``audit`` topic.

    request ── submit(AccessRecord) ──► queue ──► writer thread: build AuditEvent, INSERT (group
                 ▲                                 commit, synchronous=FULL), resolve the futures
                 └──── awaits the future (bounded) ─┘   then publish unpublished rows to the topic
    alert / notification ── disclose(DisclosureRecord) ──► the same queue (nobody waits)

Losses policy: **none** for accesses. The HTTP layer holds the response until its AuditEvent is
committed; if that fails or takes longer than ``timeout_s`` the client gets 503 instead of the
data (an access that cannot be audited is not served). Disclosures (an alert raised by the rules,
a notification sent by the subscription engine: audit_disclosure.py) have already happened when
they are reported, so they are queued without waiting: a crash can lose the few still queued, and
a failure to write one is counted (``pivot_audit_disclosure_failures_total``) and logged by
exception type. The SQLite table is also the outbox of the topic: a row is marked published only
after the event log stored it, so an event-log outage delays publication and loses nothing (at
least once on the topic: consumers dedupe on the AuditEvent id). ``close`` drains the queue.
Nothing here logs an event's content: only counts and exception types.
The SQL (schema, insert, outbox rows) is gateway/eventlog/audit_store.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

from gateway.eventlog.audit_store import AuditDb, AuditDbError
from gateway.eventlog.base import EventLog, OutRecord
from gateway.metrics import Metrics
from gateway.security.audit import AccessRecord, build_audit_event
from gateway.security.audit_disclosure import DisclosureRecord, build_disclosure_event

log = logging.getLogger("pivot.audit")

_BATCH = 500
_Item = tuple[AccessRecord | DisclosureRecord, "Future[str]"]


class AuditTrail:
    """Durable AuditEvents with a background writer; ``record`` awaits durability (bounded)."""

    def __init__(self, path: Path, event_log: EventLog | None = None, topic: str = "pivot.audit", *,
                 metrics: Metrics | None = None, timeout_s: float = 10.0) -> None:
        self.path = path
        self.event_log = event_log
        self.topic = topic
        self.metrics = metrics or Metrics()
        self.timeout_s = timeout_s
        self._db = AuditDb(path)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="audit-writer", daemon=True)
        self._thread.start()

    # -- request side ----------------------------------------------------------------------------
    def submit(self, record: AccessRecord | DisclosureRecord) -> Future[str]:
        """Queue one access or disclosure; the future gives the AuditEvent id once committed."""
        future: Future[str] = Future()
        if self._closed:
            future.set_exception(RuntimeError("audit trail closed"))
            return future
        self._queue.put((record, future))
        return future

    async def record(self, record: AccessRecord) -> bool:
        """Queue one access and wait (without blocking the event loop) until it is durable."""
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.submit(record)), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure means "not audited": the caller refuses
            self.metrics.inc("pivot_audit_failures_total", help_text="accesses refused: audit not durable")
            log.error("audit write failed: %s", type(exc).__name__)
            return False
        return True

    def disclose(self, record: DisclosureRecord) -> None:
        """Queue the AuditEvent of an alert or a notification (done already: nobody waits for it)."""
        self.submit(record).add_done_callback(self._disclosed)

    def _disclosed(self, future: Future[str]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.metrics.inc("pivot_audit_disclosure_failures_total",
                             help_text="alerts and notifications whose AuditEvent could not be written")
            log.error("audit write of a disclosure failed: %s",
                      "cancelled" if future.cancelled() else type(future.exception()).__name__)

    # -- writer ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._publish()
                continue
            batch: list[_Item] = []
            for item in [first, *self._drain()]:
                if item is None:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            self._publish()

    def _drain(self) -> list[_Item | None]:
        items: list[_Item | None] = []
        while len(items) < _BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _write(self, batch: list[_Item]) -> None:
        rows = []
        for record, future in batch:
            try:
                event, patients = (build_audit_event(record) if isinstance(record, AccessRecord)
                                   else build_disclosure_event(record))
            except Exception as exc:  # noqa: BLE001 - one bad record must not sink the batch
                _settle(future, error=exc)
                continue
            rows.append((event, patients, future))
        try:
            self._db.insert([(event, patients) for event, patients, _ in rows])
        except AuditDbError as exc:
            for _, _, future in rows:
                _settle(future, error=exc)
            return
        self.metrics.inc("pivot_audit_events_total", len(rows), help_text="AuditEvents recorded")
        for event, _, future in rows:
            _settle(future, event["id"])

    def _publish(self) -> None:
        """Append unpublished AuditEvents to the topic, oldest first; retried on the next round."""
        if self.event_log is None:
            return
        try:
            rows = self._db.unpublished(_BATCH)
            if not rows:
                return
            self.event_log.append_many([OutRecord(topic=self.topic, value=body.encode("utf-8"), key=rid.encode(),
                                                  headers={"content-type": "application/fhir+json"})
                                        for _, rid, body in rows])
            self._db.mark_published([seq for seq, _, _ in rows])
        except Exception as exc:  # noqa: BLE001 - the log may be down: keep the rows, retry later
            self.metrics.inc("pivot_audit_publish_failures_total", help_text="audit topic appends that failed")
            log.warning("audit publish deferred: %s", type(exc).__name__)

    def close(self) -> None:
        """Write and publish everything queued, then close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._db.close()


def _settle(future: Future[str], value: str = "", error: BaseException | None = None) -> None:
    """Resolve a future unless its waiter gave up (cancelled it)."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def query_audit(path: Path, *, patient: str = "", since: str = "", limit: int = 10000) -> list[dict[str, Any]]:
    """AuditEvents naming ``patient`` (``Patient/x`` or ``x``) recorded at or after ``since`` (ISO),
    oldest first: the same query as ``GET /fhir/AuditEvent`` (audit_search.py)."""
    from gateway.security.audit_search import search_audit, since_query

    _total, events, _next = search_audit(path, since_query(patient, since, limit))
    return events

"""The worker base: a thread looping poll → handle → commit on a consumer of the event log.

Subclasses (gateway.workers.MappingWorker and StoreSink, gateway.delivery.sink.DeliverySink)
implement ``handle``. A batch is committed only after ``handle`` returned: what it produced is
durable (appended to the log, or written to the store). A PublishError is retried with backoff;
a failure of one message is the subclass's to dead-letter.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.errors import PublishError
from gateway.eventlog.base import Consumer, EventLog, Record
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger("pivot.workers")
_BACKOFF_MAX_S = 5.0
# After a small batch a worker waits GATHER_S before polling again, so a steady trickle (200 msg/s
# from the sites) is handled in batches of ~10 messages: one fsync'd commit of the log or the store
# per batch instead of one per message. Those commits hold the event log's write lock, which every
# ACK's append needs (the MLLP listener appends to the same file): measured with the site bench
# (python-hl7, 4 connections, 200 msg/s), AA p50 ~17 → ~8 ms. The pipeline's latency grows by at
# most GATHER_S (ER arrival → alert readable stays far below its 1 s goal).
GATHER_S = 0.05
GATHER_BELOW = 100
# A bulk worker's batch (gateway.workers.BulkMappingWorker): a live message arriving meanwhile waits
# for it, so it is small. During a `pivot ingest` (its processes and the gateway's threads on 2
# cores) a message took ~7 ms of the bulk worker's wall time: with batches of 100, ER arrivals waited
# 0.73 s at the median, 1.8 s at p99 (bench.defisante --during-backfill). Its per-batch costs (a
# handoff take, an append, an offset commit) stay small at 25.
BULK_BATCH = 25
WORKER_NICE = 10
BULK_NICE = 15  # `pivot ingest` (history): below the gateway's workers, which are below its intake


def yield_to_intake() -> None:
    """Make the calling (worker) thread give way to the intake (Linux: both are per thread).

    The ACK path waits for nobody but the intake; the workers are throughput work that can wait a
    few milliseconds. So a worker thread runs at nice 10 (never lower than it already is), and with
    two CPUs or more it runs on all of them but one: the first CPU is left to the MLLP listener
    (process or threads), which the workers' bursts of store writes otherwise kept waiting. Measured
    here (2 cores, 200 msg/s after a 10,000-message burst): AA p99 11–18 ms → 8–13 ms, while the
    workers (one interpreter: one core's worth of Python at most) drained the burst as fast as
    before. Unprivileged: raising nice and narrowing affinity always work."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), WORKER_NICE))
    except (AttributeError, OSError):
        log.debug("worker priority unchanged")
    try:
        cpus = sorted(os.sched_getaffinity(os.getpid()))  # the main thread's: every CPU the gateway has
        if len(cpus) >= 2:
            os.sched_setaffinity(tid, cpus[1:])
    except (AttributeError, OSError):
        log.debug("worker CPU affinity unchanged")


def give_way_to_live() -> None:
    """Run the calling thread, and every thread and process it starts afterwards, at nice
    :data:`BULK_NICE` (never lower than it already is): ``pivot ingest`` calls it first. A backfill
    and its worker pool otherwise took the CPU, at nice 0, from the gateway it feeds, whose mapping
    workers run at nice 10: ER arrivals during a 20,000-message ingest waited 0.36–0.38 s at the median
    and up to 1.1 s at p99 with the bulk lane alone (bench.defisante --during-backfill). Unprivileged."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(os.getpriority(os.PRIO_PROCESS, 0), BULK_NICE))
    except (AttributeError, OSError):
        log.debug("ingest priority unchanged")


class Turn:
    """One ``handle`` at a time between the workers of a live lane and a bulk lane that share their
    collaborators (the mapping workers of ``hl7v2.in`` and ``hl7v2.bulk``: one pipeline, handoff and
    rule hooks), the live lane first: a bulk batch starts only when no live batch waits, so a live
    message waits at most for the bulk batch in hand (:data:`BULK_BATCH`), never for the backlog.

    Each worker keeps its own consumer, polled as usual (a Kafka consumer must poll with a real
    timeout to join its group), and waits for its turn only once it holds records."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._live_waiting = 0

    @contextmanager
    def taken(self, *, live: bool) -> Iterator[None]:
        with self._cond:
            self._live_waiting += live
            try:
                while self._busy or (not live and self._live_waiting):
                    self._cond.wait()
            finally:
                self._live_waiting -= live
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Worker(threading.Thread):
    """Poll → handle → commit, until stopped. ``turn``: shared with the worker of the other lane
    (:class:`Turn`); ``bulk`` says which lane this one is."""

    group = "worker"
    batch_records = 500  # records per poll
    bulk = False

    def __init__(self, settings: Settings, log_: EventLog, metrics: Metrics, topics: list[str],
                 turn: Turn | None = None) -> None:
        super().__init__(name=f"pivot-{self.group}", daemon=True)
        self.settings = settings
        self.log = log_
        self.metrics = metrics
        self.topics = topics
        self.turn = turn
        self._stop_event = threading.Event()
        self.idle = threading.Event()
        self.processed = 0
        self._consumer: Consumer | None = None

    def consumer_group(self) -> str:
        """The consumer group: shared by every gateway instance, so they split the work."""
        return f"{self.settings.kafka_group_id}-{self.group}"

    def lag(self) -> int | None:
        """Records not yet handled and committed, when the log can tell (the embedded log); else None."""
        consumer = self._consumer
        lag = getattr(consumer, "lag", None)
        if consumer is None or lag is None:
            return None
        return int(lag())

    def run(self) -> None:
        yield_to_intake()
        consumer = self.log.consumer(self.consumer_group(), self.topics)
        self._consumer = consumer
        try:
            self._loop(consumer)
        finally:
            consumer.close()

    def _loop(self, consumer: Consumer) -> None:
        while not self._stop_event.is_set():
            records = consumer.poll(timeout_s=0.2, max_records=self.batch_records)
            if not records:
                self.idle.set()
                continue
            self.idle.clear()
            if self.turn is None:
                self._retry(self.handle, records)
            else:
                with self.turn.taken(live=not self.bulk):
                    self._retry(self.handle, records)
            consumer.commit()
            self.processed += len(records)
            if len(records) < GATHER_BELOW and not self.bulk:  # a live trickle: let a batch gather
                self._stop_event.wait(GATHER_S)  # (one commit, not one per message)

    def _retry(self, action: Callable[[list[Record]], None], records: list[Record]) -> None:
        delay = 0.1
        while True:
            try:
                action(records)
                return
            except PublishError:
                if self._stop_event.is_set():
                    raise
                log.warning("%s: publish failed, retrying in %.1fs", self.group, delay)
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    def handle(self, records: list[Record]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop_event.set()

"""The two lanes of the mapping work (gateway/eventlog/worker.py ``Turn``): a live worker and a bulk
worker, each with its own consumer, handle one batch at a time between them, the live lane first;
so a live message waits at most for the bulk batch in hand, never for a backfill's backlog."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from connectors.base import Origin
from gateway.app import Gateway, create_app
from gateway.drain import wait_drained
from gateway.eventlog.base import EventLog, OutRecord, Record
from gateway.eventlog.embedded import EmbeddedLog
from gateway.eventlog.worker import BULK_BATCH, Turn, Worker
from gateway.metrics import Metrics
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.workers import BulkMappingWorker

LIVE, BULK = "t.live", "t.bulk"


class Shared:
    """What both workers record: each batch as (topic, size, bulk records handled before it)."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int]] = []
        self.bulk_done = 0
        self.first_bulk = threading.Event()
        self.inside = 0  # handles running now (never more than one)


class Recording(Worker):
    def __init__(self, log_: EventLog, tmp: Path, shared: Shared, turn: Turn, *, bulk: bool,
                 pause_s: float = 0.0) -> None:
        self.group = "lanes-bulk" if bulk else "lanes"
        self.bulk = bulk
        self.batch_records = BULK_BATCH if bulk else 500
        super().__init__(load_settings(data_dir=tmp / "var"), log_, Metrics(), [BULK if bulk else LIVE], turn)
        self.shared = shared
        self.pause_s = pause_s

    def handle(self, records: list[Record]) -> None:
        shared = self.shared
        shared.inside += 1
        assert shared.inside == 1  # the turn: one handle at a time
        shared.batches.append((records[0].topic, len(records), shared.bulk_done))
        time.sleep(self.pause_s)
        if self.bulk:
            shared.bulk_done += len(records)
            shared.first_bulk.set()
        shared.inside -= 1


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    opened = EmbeddedLog(tmp_path / "log.sqlite")
    yield opened
    opened.close()


def _fill(log_: EventLog, topic: str, n: int, tag: str) -> None:
    log_.append_many([OutRecord(topic, f"{tag}{i}".encode(), key=b"k%d" % (i % 7)) for i in range(n)])


def _pair(log_: EventLog, tmp: Path, pause_s: float = 0.0) -> tuple[Shared, Recording, Recording]:
    shared, turn = Shared(), Turn()
    return (shared, Recording(log_, tmp, shared, turn, bulk=False, pause_s=pause_s),
            Recording(log_, tmp, shared, turn, bulk=True, pause_s=pause_s))


class _Host:  # what wait_drained reads of a Gateway
    def __init__(self, *workers: Worker) -> None:
        self.workers = list(workers)


def _drain(*workers: Worker) -> None:
    for worker in workers:
        if not worker.is_alive():
            worker.start()
    try:
        assert wait_drained(_Host(*workers), timeout_s=30, settle_s=0.2)  # type: ignore[arg-type]
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(5)


def test_the_backlog_goes_in_small_batches_and_the_live_records_meet_at_most_one(log: EmbeddedLog,
                                                                                 tmp_path: Path) -> None:
    _fill(log, BULK, 1_000, "history")
    _fill(log, LIVE, 3, "arrival")
    shared, live, bulk = _pair(log, tmp_path, pause_s=0.005)
    _drain(live, bulk)
    ((_t, size, bulk_before),) = [b for b in shared.batches if b[0] == LIVE]
    assert size == 3
    assert bulk_before <= BULK_BATCH
    assert [n for topic, n, _ in shared.batches if topic == BULK] == [BULK_BATCH] * (1_000 // BULK_BATCH)
    assert live.processed + bulk.processed == 1_003
    assert live.lag() == 0
    assert bulk.lag() == 0


def test_a_live_record_waits_for_the_bulk_batch_in_hand_not_the_backlog(log: EmbeddedLog, tmp_path: Path) -> None:
    _fill(log, BULK, 2_000, "history")
    shared, live, bulk = _pair(log, tmp_path, pause_s=0.02)
    live.start()
    bulk.start()
    try:
        assert shared.first_bulk.wait(10)
        _fill(log, LIVE, 1, "arrival")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t == LIVE for t, *_ in shared.batches):
            time.sleep(0.005)
        ((_t, _n, bulk_before),) = [b for b in shared.batches if b[0] == LIVE]
        assert bulk_before <= 3 * BULK_BATCH  # the first batch, the one in hand when it came, not the 2,000
        waiting = bulk.lag()
        assert waiting is not None
        assert waiting >= 2_000 - 4 * BULK_BATCH  # most of the backlog still waits
    finally:
        _drain(live, bulk)
    assert bulk.processed == 2_000


def test_a_waiting_live_batch_goes_before_a_waiting_bulk_batch() -> None:
    turn, order = Turn(), []
    started: list[str] = []

    def take(name: str, live: bool) -> None:
        started.append(name)
        with turn.taken(live=live):
            order.append(name)

    with turn.taken(live=False):  # a bulk batch in hand
        bulk_next = threading.Thread(target=take, args=("bulk", False))
        bulk_next.start()
        time.sleep(0.05)  # the next bulk batch waits first…
        live_next = threading.Thread(target=take, args=("live", True))
        live_next.start()
        while len(started) < 2:
            time.sleep(0.005)
        time.sleep(0.05)
    bulk_next.join(5)
    live_next.join(5)
    assert order == ["live", "bulk"]  # …and still goes after the live one


def test_wait_drained_waits_for_the_bulk_lane(log: EmbeddedLog, tmp_path: Path) -> None:
    _fill(log, BULK, 500, "history")
    shared, live, bulk = _pair(log, tmp_path, pause_s=0.01)
    _drain(live, bulk)
    assert shared.bulk_done == 500


def test_metrics_show_how_much_of_a_backfill_waits(tmp_path: Path) -> None:
    """``pivot_worker_lag_records{worker="mapper-bulk"}``: what an operator watches during a backfill."""
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    try:
        gw.start_workers()
        bulk = next(w for w in gw.workers if isinstance(w, BulkMappingWorker))
        assert bulk.turn is not None
        http = TestClient(create_app(gw))
        with bulk.turn.taken(live=True):  # a live batch in hand: the bulk lane waits for its turn
            replies = gw.intake.receive_many([(er_message(800 + i, control_id=f"LAG{i:03d}"), Origin("file", "h.hl7"))
                                              for i in range(40)])
            assert {r.code for r in replies} == {"AA"}
            assert bulk.lag() == 40
            assert 'pivot_worker_lag_records{worker="mapper-bulk"} 40.000' in http.get("/metrics").text
        assert wait_drained(gw, timeout_s=60)
        text = http.get("/metrics").text
        assert 'pivot_worker_lag_records{worker="mapper-bulk"} 0.000' in text
        assert 'pivot_worker_lag_records{worker="mapper"} 0.000' in text
    finally:
        gw.close()

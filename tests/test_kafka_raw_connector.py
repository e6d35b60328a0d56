"""The raw ER7 Kafka connector against tansu, with a fake Receiver at the intake seam.

Checked: each record reaches the receiver exactly once with its ``topic:partition:offset`` origin;
AA/AE/AR are final and committed; a restarted connector resumes after the committed offsets; a
receiver failure (exception or a transient "log down" reply) delivers the record again, in order,
without skipping it; the logs carry control ids and references, never message content.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.base import Origin, Reply
from connectors.kafka_raw import KafkaRawConnector
from gateway.errors import PublishError
from gateway.eventlog.base import OutRecord
from gateway.eventlog.kafka import KafkaLog
from gateway.hl7v2 import parse
from gateway.samples import er_message

pytestmark = pytest.mark.kafka


@dataclass(slots=True)
class DownReply(Reply):
    """The shape the intake should give a "log unavailable" AR (see connectors.kafka_raw.is_final)."""

    transient: bool = True


class FakeReceiver:
    """Records every call; ``plan`` decides the outcome of each (raw message, attempt number)."""

    def __init__(self, plan: Callable[[str, int], str] | None = None) -> None:
        self.calls: list[tuple[str, Origin]] = []
        self.plan = plan or (lambda _cid, _attempt: "AA")
        self._lock = threading.Lock()

    def receive(self, raw: bytes, origin: Origin) -> Reply:
        control_id = parse(raw).control_id
        with self._lock:
            self.calls.append((control_id, origin))
            attempt = sum(1 for cid, _ in self.calls if cid == control_id)
        outcome = self.plan(control_id, attempt)
        if outcome == "raise":
            raise PublishError("event log unavailable")
        if outcome == "down":
            return DownReply(code="AR", control_id=control_id, error="event log unavailable")
        return Reply(code=outcome, control_id=control_id)

    def ids(self) -> list[str]:
        with self._lock:
            return [cid for cid, _ in self.calls]


def produce(bootstrap: str, topic: str, messages: list[bytes]) -> list[str]:
    log = KafkaLog(bootstrap, client_id="site-feed")
    try:  # a site lands one message per record, keyed by its sender
        log.append_many([OutRecord(topic, raw, key=b"site-%d" % (n % 3)) for n, raw in enumerate(messages)])
    finally:
        log.close()
    return [parse(raw).control_id for raw in messages]


def committed_total(bootstrap: str, topic: str, group: str) -> int:
    """Sum of the group's committed offsets = records committed (offsets start at 0 per partition)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0
                   for p in consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def connector(bootstrap: str, topic: str, group: str, receiver: FakeReceiver) -> KafkaRawConnector:
    return KafkaRawConnector(bootstrap=bootstrap, topic=topic, group=group, receiver=receiver,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000, poll_timeout_s=0.2)


def run_until(conn: KafkaRawConnector, done: Callable[[], bool], timeout_s: float = 30.0,
              settle_s: float = 1.0) -> None:
    """Start, wait for ``done`` (then ``settle_s`` more to catch any extra delivery), stop."""
    asyncio.run(conn.start())
    try:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(settle_s)
    finally:
        asyncio.run(conn.stop())


def test_each_record_received_once_and_committed(kafka_broker: str, topic_prefix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    topic, group = f"{topic_prefix}site.hl7v2", f"{topic_prefix}raw-in"
    wanted = produce(kafka_broker, topic, [er_message(i) for i in range(24)])
    refused = {wanted[3]: "AE", wanted[7]: "AR"}  # content errors are final: dead letters have them
    receiver = FakeReceiver(lambda cid, _attempt: refused.get(cid, "AA"))
    conn = connector(kafka_broker, topic, group, receiver)
    run_until(conn, lambda: len(receiver.calls) >= 24)
    assert sorted(receiver.ids()) == sorted(wanted)  # every one, exactly once
    refs = [origin.peer for _, origin in receiver.calls]
    assert all(origin.transport == "kafka" for _, origin in receiver.calls)
    assert len(set(refs)) == 24
    assert all(ref.startswith(f"{topic}:") for ref in refs)
    assert conn.outcomes == {"AA": 22, "AE": 1, "AR": 1}
    assert committed_total(kafka_broker, topic, group) == 24
    assert "Tremblay" not in caplog.text
    assert "PID|" not in caplog.text
    assert wanted[3] in caplog.text  # refused messages are logged by control id


def test_restart_resumes_after_committed_offsets(kafka_broker: str, topic_prefix: str) -> None:
    topic, group = f"{topic_prefix}site.hl7v2", f"{topic_prefix}raw-in"
    first_batch = produce(kafka_broker, topic, [er_message(i) for i in range(10)])
    first = FakeReceiver()
    run_until(connector(kafka_broker, topic, group, first), lambda: len(first.calls) >= 10)
    assert sorted(first.ids()) == sorted(first_batch)
    second_batch = produce(kafka_broker, topic, [er_message(i) for i in range(10, 16)])
    second = FakeReceiver()
    run_until(connector(kafka_broker, topic, group, second), lambda: len(second.calls) >= 6, settle_s=2.0)
    assert sorted(second.ids()) == sorted(second_batch)  # nothing of the first batch again
    assert committed_total(kafka_broker, topic, group) == 16


@pytest.mark.parametrize("failure", ["raise", "down"])
def test_receiver_failure_delivers_the_record_again(kafka_broker: str, topic_prefix: str, failure: str) -> None:
    topic, group = f"{topic_prefix}site.hl7v2", f"{topic_prefix}raw-in"
    messages = [er_message(i) for i in range(12)]
    wanted = produce(kafka_broker, topic, messages)
    flaky = {wanted[2], wanted[9]}  # fail twice each, then succeed
    receiver = FakeReceiver(lambda cid, attempt: failure if cid in flaky and attempt <= 2 else "AA")
    conn = connector(kafka_broker, topic, group, receiver)
    run_until(conn, lambda: conn.outcomes["AA"] >= 12)
    ids = receiver.ids()
    assert sorted(set(ids)) == sorted(wanted)
    assert all(ids.count(cid) == 3 for cid in flaky)
    assert all(ids.count(cid) == 1 for cid in wanted if cid not in flaky)
    assert conn.outcomes["AA"] == 12
    assert conn.retries >= 4
    assert committed_total(kafka_broker, topic, group) == 12
    # per partition, the accepted messages still come in offset order: a failure never skips ahead
    accepted: dict[str, list[int]] = {}
    seen: dict[str, int] = {}
    for cid, origin in receiver.calls:
        seen[cid] = seen.get(cid, 0) + 1
        if cid not in flaky or seen[cid] == 3:
            _topic, partition, offset = origin.peer.rsplit(":", 2)
            accepted.setdefault(partition, []).append(int(offset))
    assert all(offsets == sorted(offsets) for offsets in accepted.values())
    assert sum(len(v) for v in accepted.values()) == 12

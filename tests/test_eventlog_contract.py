"""The EventLog contract (gateway/eventlog/base.py), run over the embedded log and over Kafka (tansu).

Both implementations must: store durably before ``append`` returns; keep the order of one key;
let a new consumer of a group resume after the committed offset; deliver uncommitted records again
(at-least-once); read a whole topic with ``read_all``; round-trip headers and keys; refuse writes
after ``close`` with PublishError.

Semantics that differ, on purpose:
- Kafka spreads a group's partitions over its live members (several gateway processes share the
  work); see ``test_two_consumers_of_a_group_share_partitions``.
- The embedded log serves one gateway process: a topic has one partition and a group is meant to
  have one live consumer at a time (a second concurrent consumer of the same group would receive
  every record too). Resuming from the committed offset works across consumers and restarts.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.errors import PublishError
from gateway.eventlog.base import Consumer, EventLog, OutRecord, Record, read_in_order
from gateway.eventlog.embedded import EmbeddedLog
from gateway.eventlog.kafka import KafkaLog


@dataclass
class LogUnderTest:
    """One implementation: ``open()`` builds a fresh handle on the same storage."""

    kind: str
    factory: Callable[[], EventLog]
    prefix: str
    opened: list[EventLog] = field(default_factory=list)

    def open(self) -> EventLog:
        log = self.factory()
        self.opened.append(log)
        return log

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def impl(request: pytest.FixtureRequest, tmp_path: Path, topic_prefix: str) -> Iterator[LogUnderTest]:
    if request.param == "embedded":
        path = tmp_path / "log.sqlite"
        under = LogUnderTest("embedded", lambda: EmbeddedLog(path), topic_prefix)
    else:
        bootstrap = request.getfixturevalue("kafka_broker")
        under = LogUnderTest("kafka", lambda: KafkaLog(bootstrap, client_id="contract", session_timeout_ms=6000,
                                                       heartbeat_interval_ms=1000), topic_prefix)
    yield under
    for log in under.opened:
        log.close()


def drain(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Poll until ``count`` records arrived (or the timeout); the group join is included."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.poll(timeout_s=0.5, max_records=100))
    return got


def quiet(consumer: Consumer, seconds: float = 1.5) -> list[Record]:
    """Whatever else arrives within ``seconds`` (expected: nothing)."""
    got: list[Record] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got.extend(consumer.poll(timeout_s=0.3))
    return got


def values(records: list[Record]) -> list[bytes]:
    return [r.value for r in records]


def test_append_is_durable_and_readable_by_a_new_handle(impl: LogUnderTest) -> None:
    topic = impl.topic("hl7v2.in")
    writer = impl.open()
    writer.append(OutRecord(topic, b"one", key=b"p1"))
    writer.append_many([OutRecord(topic, b"two", key=b"p2"), OutRecord(topic, b"three", key=b"p1")])
    writer.close()  # everything returned by append is stored: a closed writer loses nothing
    records = impl.open().read_all(topic)
    assert sorted(values(records)) == [b"one", b"three", b"two"]
    assert {r.value: r.key for r in records} == {b"one": b"p1", b"two": b"p2", b"three": b"p1"}
    assert all(r.topic == topic and r.ref == f"{topic}:{r.partition}:{r.offset}" for r in records)
    assert all(r.timestamp_ms > 1_600_000_000_000 for r in records)


def test_order_is_kept_per_key(impl: LogUnderTest) -> None:
    topic = impl.topic("fhir.Encounter")
    log = impl.open()
    keys = [f"patient-{n}".encode() for n in range(6)]
    for start in range(0, 60, 12):  # several batches, keys interleaved inside each batch
        log.append_many([OutRecord(topic, b"%s:%03d" % (keys[i % 6], i), key=keys[i % 6])
                         for i in range(start, start + 12)])
    consumer = log.consumer(impl.topic("g-order"), [topic])
    try:
        got = drain(consumer, 60)
    finally:
        consumer.close()
    assert len(got) == 60
    by_key: dict[bytes, list[int]] = defaultdict(list)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for rec in got:
        assert rec.key is not None
        by_key[rec.key].append(int(rec.value.split(b":")[1]))
        partitions[rec.key].add(rec.partition)
    assert set(by_key) == set(keys)
    for key, seq in by_key.items():
        assert seq == sorted(seq), key
        assert len(seq) == 10, key
        assert len(partitions[key]) == 1  # one key, one partition
    if impl.kind == "kafka":  # six keys over four partitions: the records really are spread
        assert len({p for ps in partitions.values() for p in ps}) > 1


def test_new_consumer_resumes_after_the_committed_offset(impl: LogUnderTest) -> None:
    topic, group = impl.topic("hl7v2.in"), impl.topic("g-resume")
    log = impl.open()
    log.append_many([OutRecord(topic, b"old-%d" % i, key=b"k%d" % (i % 3)) for i in range(9)])
    first = log.consumer(group, [topic])
    assert sorted(values(drain(first, 9))) == sorted(b"old-%d" % i for i in range(9))
    first.commit()
    first.close()
    log.append_many([OutRecord(topic, b"new-%d" % i, key=b"k%d" % (i % 3)) for i in range(4)])
    second = impl.open().consumer(group, [topic])
    try:
        got = drain(second, 4) + quiet(second)
    finally:
        second.close()
    assert sorted(values(got)) == [b"new-0", b"new-1", b"new-2", b"new-3"]


def test_uncommitted_records_are_delivered_again(impl: LogUnderTest) -> None:
    topic, group = impl.topic("fhir.Patient"), impl.topic("g-redeliver")
    log = impl.open()
    log.append_many([OutRecord(topic, b"a-%d" % i, key=b"k%d" % i) for i in range(5)])
    first = log.consumer(group, [topic])
    assert len(drain(first, 5)) == 5
    first.commit()
    log.append_many([OutRecord(topic, b"b-%d" % i, key=b"k%d" % i) for i in range(5)])
    assert sorted(values(drain(first, 5))) == sorted(b"b-%d" % i for i in range(5))
    first.close()  # the b-* records were handed out but never committed: a "crash"
    second = log.consumer(group, [topic])
    try:
        got = drain(second, 5) + quiet(second)
    finally:
        second.close()
    assert sorted(values(got)) == sorted(b"b-%d" % i for i in range(5))


def test_a_silent_topic_never_holds_back_the_others(impl: LogUnderTest) -> None:
    """A consumer of several topics, one of which never gets a record, still reads everything
    (regression: the embedded log once started every fetch at the lowest topic position)."""
    busy, silent = impl.topic("fhir.Encounter"), impl.topic("fhir.PractitionerRole")
    log = impl.open()
    log.append_many([OutRecord(busy, b"%04d" % i, key=b"p%d" % (i % 7)) for i in range(1200)])
    consumer = log.consumer(impl.topic("g-silent"), [busy, silent])
    try:
        got = drain(consumer, 1200, timeout_s=60)
    finally:
        consumer.close()
    assert sorted(values(got)) == [b"%04d" % i for i in range(1200)]


def test_read_all_returns_every_record_of_one_topic_only(impl: LogUnderTest) -> None:
    topic, other = impl.topic("deadletter"), impl.topic("fhir.Patient")
    log = impl.open()
    assert log.read_all(impl.topic("never-written")) == []
    log.append_many([OutRecord(topic, b"dead-%03d" % i, key=b"s%d" % (i % 10)) for i in range(120)])
    log.append(OutRecord(other, b"not-a-dead-letter", key=b"s1"))
    log.append(OutRecord(topic, b"dead-late", key=None))
    records = log.read_all(topic)
    assert sorted(values(records)) == sorted([b"dead-%03d" % i for i in range(120)] + [b"dead-late"])
    assert len({r.ref for r in records}) == 121
    assert log.read_all(topic) == records  # reading is repeatable and consumes nothing


def test_headers_and_keys_round_trip(impl: LogUnderTest) -> None:
    topic = impl.topic("hl7v2.in")
    log = impl.open()
    headers = {"sender": "LAB|CHUM", "control-id": "MSG-00042", "reason": "PID-7 invalide: Montréal",
               "empty": ""}
    log.append(OutRecord(topic, b"\x0bMSH|^~\\&|\x1c\r\xff", key=b"\x00\x01key", headers=headers))
    log.append(OutRecord(topic, b"bare"))
    records = {r.value: r for r in impl.open().read_all(topic)}
    assert records[b"\x0bMSH|^~\\&|\x1c\r\xff"].headers == headers
    assert records[b"\x0bMSH|^~\\&|\x1c\r\xff"].key == b"\x00\x01key"
    assert records[b"bare"].headers == {}
    assert records[b"bare"].key is None


def test_two_topics_are_read_back_merged_in_append_order(impl: LogUnderTest) -> None:
    """``read_in_order`` (``identity rebuild`` over hl7v2.in and hl7v2.bulk): the records of both
    topics in the order they were appended, whichever topic and key each went to."""
    live, bulk = impl.topic("hl7v2.in"), impl.topic("hl7v2.bulk")
    log = impl.open()
    sent = []
    for n in range(12):
        topic = bulk if n % 3 else live
        value = b"%s-%02d" % (topic.encode(), n)
        log.append(OutRecord(topic, value, key=b"patient-%d" % (n % 4)))
        sent.append(value)
        time.sleep(0.003)  # Kafka orders across topics by timestamp (ms): one per record
    assert [r.value for r in read_in_order(impl.open(), [live, bulk])] == sent
    assert [r.value for r in read_in_order(impl.open(), [bulk, live])] == sent


def test_append_after_close_raises_publish_error(impl: LogUnderTest) -> None:
    log = impl.open()
    log.append(OutRecord(impl.topic("hl7v2.in"), b"x", key=b"k"))
    log.close()
    with pytest.raises(PublishError):
        log.append(OutRecord(impl.topic("hl7v2.in"), b"y", key=b"k"))


def test_two_consumers_of_a_group_share_partitions(impl: LogUnderTest) -> None:
    if impl.kind == "embedded":
        pytest.skip("the embedded log serves one gateway process: one live consumer per group "
                    "(see the module docstring)")
    topic, group = impl.topic("fhir.Observation"), impl.topic("g-share")
    log = impl.open()
    log.append(OutRecord(topic, b"warm-up", key=b"w"))  # creates the topic (4 partitions)
    members = [_Member(log.consumer(group, [topic])) for _ in range(2)]
    for member in members:
        member.start()
    try:
        deadline = time.monotonic() + 30  # both must hold partitions before the real records
        while time.monotonic() < deadline and not (
                all(m.assigned for m in members) and len(members[0].assigned | members[1].assigned) == 4):
            time.sleep(0.1)
        one, two = members[0].assigned, members[1].assigned
        assert one, "both members should own partitions"
        assert two, "both members should own partitions"
        assert not one & two
        log.append_many([OutRecord(topic, b"obs-%03d" % i, key=b"patient-%d" % i) for i in range(80)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(len(m.real()) for m in members) < 80:
            time.sleep(0.1)
    finally:
        for member in members:
            member.stop()
    got_one, got_two = members[0].real(), members[1].real()
    assert got_one
    assert got_two
    assert sorted(values(got_one + got_two)) == sorted(b"obs-%03d" % i for i in range(80))
    assert not {r.partition for r in got_one} & {r.partition for r in got_two}


class _Member(threading.Thread):
    """One group member polling in its own thread, as one gateway process would."""

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(daemon=True)
        self.consumer = consumer
        self.records: list[Record] = []
        self.assigned: set[int] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                self.records += self.consumer.poll(0.2)
                self.assigned = _assigned(self.consumer)
        finally:
            self.consumer.close()

    def real(self) -> list[Record]:
        return [r for r in list(self.records) if r.value != b"warm-up"]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _assigned(consumer: Consumer) -> set[int]:
    raw = getattr(consumer, "raw", None)
    return {tp.partition for tp in raw.assignment()} if raw is not None else set()

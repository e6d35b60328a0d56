"""KafkaLog against a real Kafka-protocol broker (tansu): topic creation, failures, recovery.

The behaviour shared with the embedded log is in test_eventlog_contract.py; here are the parts
only Kafka has: partitions, an unreachable or restarted broker, the bounded publish timeout.
"""

from __future__ import annotations

import logging
import time

import pytest
from kafka import KafkaConsumer

from gateway.errors import PublishError
from gateway.eventlog.base import OutRecord, Record
from gateway.eventlog.kafka import KafkaLog
from tests.kafka_fixtures import BrokerProcess, free_port

pytestmark = pytest.mark.kafka

SECRET = b"PID|1||1234567^^^CHUM^MR||TREMBLAY^MARIE-CANARY"


def make_log(bootstrap: str, timeout_s: float = 2.0) -> KafkaLog:
    return KafkaLog(bootstrap, client_id="test", session_timeout_ms=6000, heartbeat_interval_ms=1000,
                    publish_timeout_s=timeout_s)


def partitions(bootstrap: str, topic: str) -> set[int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, allow_auto_create_topics=False)
    try:
        return set(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def test_topics_are_created_with_four_partitions_on_first_use(kafka_broker: str, topic_prefix: str) -> None:
    log = make_log(kafka_broker)
    try:
        topic = f"{topic_prefix}fhir.Patient"
        assert partitions(kafka_broker, topic) == set()
        log.append(OutRecord(topic, b"{}", key=b"patient-1"))
        assert partitions(kafka_broker, topic) == {0, 1, 2, 3}
        consumer_topic = f"{topic_prefix}fhir.Encounter"
        consumer = log.consumer(f"{topic_prefix}g", [consumer_topic])
        consumer.poll(0.1)  # a consumer creates its topics too (a worker may start before any write)
        consumer.close()
        assert partitions(kafka_broker, consumer_topic) == {0, 1, 2, 3}
    finally:
        log.close()


def test_same_key_same_partition_across_handles(kafka_broker: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}fhir.Patient"
    first, second = make_log(kafka_broker), make_log(kafka_broker)
    try:
        first.append_many([OutRecord(topic, b"a%d" % i, key=b"patient-%d" % i) for i in range(20)])
        second.append_many([OutRecord(topic, b"b%d" % i, key=b"patient-%d" % i) for i in range(20)])
        where: dict[bytes | None, set[int]] = {}
        for rec in first.read_all(topic):
            where.setdefault(rec.key, set()).add(rec.partition)
    finally:
        first.close()
        second.close()
    assert len(where) == 20
    assert all(len(parts) == 1 for parts in where.values())
    assert len({p for parts in where.values() for p in parts}) > 1


def test_unreachable_broker_raises_publish_error_in_bounded_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log = make_log(f"127.0.0.1:{free_port()}", timeout_s=1.5)  # nothing listens there
    try:
        started = time.monotonic()
        with pytest.raises(PublishError) as info:
            log.append(OutRecord("pivot.hl7v2.in", SECRET, key=b"patient-1", headers={"name": "CANARY"}))
        elapsed = time.monotonic() - started
        consumer = log.consumer("g", ["pivot.hl7v2.in"])
        started_poll = time.monotonic()
        assert consumer.poll(timeout_s=0.2) == []  # no exception while the broker is away
        poll_elapsed = time.monotonic() - started_poll
        consumer.close()
    finally:
        log.close()
    assert elapsed < 5, elapsed
    assert poll_elapsed < 5, poll_elapsed
    assert info.value.code == 1600
    assert info.value.ack_code == "AR"
    assert "CANARY" not in str(info.value)
    assert "TREMBLAY" not in str(info.value)
    assert "CANARY" not in caplog.text
    assert "TREMBLAY" not in caplog.text


def test_broker_down_then_back(broker_process: BrokerProcess, topic_prefix: str) -> None:
    topic = f"{topic_prefix}hl7v2.in"
    log = make_log(broker_process.bootstrap, timeout_s=2.0)
    try:
        log.append(OutRecord(topic, b"before", key=b"k"))
        broker_process.kill()
        started = time.monotonic()
        with pytest.raises(PublishError):
            log.append_many([OutRecord(topic, SECRET, key=b"k"), OutRecord(topic, b"x", key=b"j")])
        assert time.monotonic() - started < 6
        with pytest.raises(PublishError):  # still down: still a clear error, no hang
            log.append(OutRecord(topic, b"again", key=b"k"))
        broker_process.start()  # memory storage: the restarted broker is empty
        deadline = time.monotonic() + 20
        while True:  # the gateway keeps answering AR until the broker is reachable again
            try:
                log.append(OutRecord(topic, b"after", key=b"k"))
                break
            except PublishError:
                assert time.monotonic() < deadline, "KafkaLog did not recover after the broker came back"
                time.sleep(0.2)
        assert [r.value for r in log.read_all(topic)] == [b"after"]
    finally:
        log.close()


def test_commit_with_broker_gone_does_not_raise(broker_process: BrokerProcess, topic_prefix: str) -> None:
    topic = f"{topic_prefix}hl7v2.in"
    log = make_log(broker_process.bootstrap, timeout_s=2.0)
    try:
        log.append_many([OutRecord(topic, b"r%d" % i, key=b"k%d" % i) for i in range(4)])
        consumer = log.consumer(f"{topic_prefix}g", [topic])
        got: list[Record] = []
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        assert len(got) == 4
        broker_process.kill()
        started = time.monotonic()
        consumer.commit()  # logged, not raised: the records will simply be delivered again
        assert time.monotonic() - started < 10
        consumer.close()
    finally:
        log.close()

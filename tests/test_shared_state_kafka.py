"""Two gateway instances on one PostgreSQL (PIVOT_STATE_URL) and one Kafka broker (tansu): a resend to
the other instance is a duplicate, the other instance's mapping worker publishes the intake's own
result (the handoff), and an enrollment made through one instance makes an arrival mapped by the
other alert at once, exactly once. Without PIVOT_STATE_URL a second instance is refused."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from gateway.app import Gateway
from gateway.defisante import codes
from gateway.defisante.arrival import ZONE, visit_message
from gateway.defisante.roster import read
from gateway.errors import ConfigError
from gateway.eventlog.kafka import group_members
from gateway.eventlog.state.handoff import SharedMapCache
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import Settings, load_settings
from gateway.topics import ALERTS
from tests.test_defisante_support import alert_events, enroll_body, wait_until

pytestmark = pytest.mark.kafka
ORIGIN_ARGS = ("test", "shared-state")


def _settings(tmp: Path, name: str, bootstrap: str, prefix: str, state_url: str, *, workers: bool) -> Settings:
    return load_settings(data_dir=tmp / name, kafka_bootstrap=bootstrap, kafka_topic_prefix=prefix,
                         kafka_group_id=prefix.rstrip("."), kafka_session_timeout_ms=6000, state_url=state_url,
                         workers=workers)


@pytest.fixture
def pair(kafka_broker: str, topic_prefix: str, pg_url: str, tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    """Instance 1 takes messages and enrollments only (no workers); instance 2 maps everything."""
    first = Gateway(_settings(tmp_path, "a", kafka_broker, topic_prefix, pg_url, workers=False))
    second = Gateway(_settings(tmp_path, "b", kafka_broker, topic_prefix, pg_url, workers=True))
    first.start_workers()
    second.start_workers()
    try:
        yield first, second
    finally:
        second.close()
        first.close()


def _receive(gw: Gateway, raw: bytes) -> Any:
    from connectors.base import Origin

    return gw.intake.receive(raw, Origin(*ORIGIN_ARGS))


def _taken(cache: Any, key: str) -> bool:
    assert isinstance(cache, SharedMapCache)
    with cache.db.transaction() as tx:
        return bool(tx.execute("SELECT 1 FROM handoff WHERE key = ? AND taken IS NOT NULL", (key,)))


def test_two_instances_share_dedupe_handoff_and_the_register(pair: tuple[Gateway, Gateway]) -> None:
    first, second = pair
    raw = er_message(0)
    msg = parse(raw)
    assert _receive(first, raw).code == "AA"
    again = _receive(second, raw)
    assert (again.code, again.duplicate) == ("AA", True)  # the resend reached the other instance
    # instance 2's mapping worker took instance 1's result (one resolution per message)
    wait_until(lambda: _taken(second.cache, f"{msg.sender}|{msg.control_id}"), timeout_s=60)
    found = wait_until(lambda: second.store.search("Patient", [("_count", "5")])[1].entries, timeout_s=60)
    patient = found[0].resource
    pid = str(patient["id"])
    first.store.upsert_many([patient])  # what instance 1's own store sink would hold
    sink = next(w for w in second.workers if w.group == "store")
    sink.stop()  # instance 2's store will not learn the enrollment from fhir.Flag
    sink.join(10)

    first.defisante.enroll(pid, enroll_body(), {})
    assert read(second.store, "Flag", codes.flag_id(pid)) is None  # not in instance 2's store: the register tells
    when = datetime.now(ZONE) - timedelta(minutes=5)
    arrival = visit_message(patient, site="HLA", trigger="A04", visit="VHLA77", when=when)
    assert _receive(second, arrival).code == "AA"
    topic = second.settings.topic(ALERTS)

    def arrivals() -> list[dict[str, Any]]:
        return [e for e in alert_events(second.log, topic) if e["kind"] == codes.ARRIVAL]

    assert len(wait_until(arrivals, timeout_s=60)) == 1  # at once: from the shared register
    # the same visit again: the A08 with a new MSH-10 through instance 1, the A04 resent to instance 1
    update = visit_message(patient, site="HLA", trigger="A08", visit="VHLA77", when=when, control_id="UPD77")
    assert _receive(first, update).code == "AA"
    assert _receive(first, arrival).duplicate
    encounters = second.settings.topic("fhir.Encounter")
    wait_until(lambda: any(r.headers.get("msh10") == "UPD77" for r in second.log.read_all(encounters)),
               timeout_s=60)
    time.sleep(0.5)
    assert len(arrivals()) == 1  # exactly once


def test_kafka_without_state_url_refuses_a_second_instance(kafka_broker: str, topic_prefix: str, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    group = topic_prefix.rstrip(".")
    settings = load_settings(data_dir=tmp_path / "var", kafka_bootstrap=kafka_broker, kafka_topic_prefix=topic_prefix,
                             kafka_group_id=group, kafka_session_timeout_ms=1000)
    caplog.set_level(logging.WARNING, logger="pivot")
    alone = Gateway(settings)  # nobody in the group: a warning only
    alone.close()
    assert "must be the only gateway instance" in caplog.text
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    producer.send(f"{topic_prefix}hl7v2.in", b"x", key=b"k")
    producer.flush()
    producer.close()
    members = []

    def join(client_id: str) -> None:
        member = KafkaConsumer(f"{topic_prefix}hl7v2.in", bootstrap_servers=kafka_broker, group_id=f"{group}-mapper",
                               client_id=client_id, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                               enable_auto_commit=False)
        members.append(member)

        def listed() -> bool:
            for one in members:  # every member polls: a rebalance waits for all of them
                one.poll(100)
            return any(m.startswith(f"{client_id}-") for m in group_members(kafka_broker, f"{group}-mapper") or [])

        wait_until(listed, timeout_s=30)

    try:
        # a member this instance left behind (killed a moment ago: tansu keeps listing it) is not another instance
        join(f"pivot-{(tmp_path / 'var' / 'instance-id').read_text().strip()}")
        Gateway(settings).close()
        join("pivot-0123456789ab")  # another instance's
        with pytest.raises(ConfigError, match="PIVOT_STATE_URL"):
            Gateway(settings)
        Gateway(settings.model_copy(update={"workers": False})).close()  # pivot ingest: joins no group
    finally:
        for member in members:
            member.close()

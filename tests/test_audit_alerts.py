"""AuditEvents of what the gateway discloses on its own: every alert the Défi Santé and pharmacy
rules raise, and every event-notification the subscription engine sends (accepted or failed).

Each names the gateway as requestor, the recipients, the Patient and the Communication /
Subscription (and the focus of the events) by reference only, with the outcome; each is found by
``pivot audit --patient``. The components are built directly with a real AuditTrail (what the
Gateway wires in gateway/app.py); receivers are real HTTP servers on loopback.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.defisante import DefiSanteRules
from gateway.envelope import now_iso
from gateway.fhir.models import validate
from gateway.fhirstore import FhirStore
from gateway.hl7v2 import parse
from gateway.pharmacy import PharmacyRules
from gateway.samples import er_message
from gateway.security.audit_cli import add_parser, run
from gateway.security.audit_disclosure import build_disclosure_event, notification_disclosure
from gateway.security.audit_trail import AuditTrail, query_audit
from gateway.settings import Settings, load_settings
from gateway.subscriptions import SubscriptionConfig, SubscriptionEngine
from mappings import MapContext, map_message
from tests.test_pharmacy_support import PROFILES, SYSTEMS, dispense, enroll, feed, open_store
from tests.test_subscriptions import CANARY, FAST, SECRET, Receiver, care_plan, subscription

JSON = dict[str, Any]
EXPORT = "110106"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = load_settings(data_dir=tmp_path / "var")
    s.data_dir.mkdir(parents=True, exist_ok=True)
    return s


@pytest.fixture
def trail(settings: Settings) -> Iterator[AuditTrail]:
    t = AuditTrail(settings.data_dir / "audit.sqlite")
    yield t
    t.close()


def _events(settings: Settings, patient: str = "") -> list[JSON]:
    return query_audit(settings.data_dir / "audit.sqlite", patient=patient)


def _wait(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _cli(settings: Settings, patient: str) -> str:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="cmd"))
    out = io.StringIO()
    assert run(settings, parser.parse_args(["audit", "--patient", patient]), out) == 0
    return out.getvalue()


def _refs(event: JSON, role: str) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if e["role"]["code"] == role and "what" in e]


def _recipients(event: JSON) -> list[str]:
    return [a["who"].get("reference") or a["who"]["display"] for a in event["agent"][1:]]


def _check_shape(event: JSON) -> None:
    """A valid R4 AuditEvent: an Export by the gateway itself, to recipients who did not ask."""
    validate(event)
    assert event["type"]["code"] == EXPORT
    me = event["agent"][0]
    assert me["requestor"] is True
    assert me["who"]["identifier"] == {"system": "urn:pivot:system", "value": "pivot"}
    assert all(a["requestor"] is False and a["type"]["coding"][0]["code"] == "110152" for a in event["agent"][1:])
    assert "network" not in json.dumps(event["agent"])  # no endpoint, no address


# -- Défi Santé rules ----------------------------------------------------------------------------
def test_an_er_arrival_alert_is_audited_per_recipient_and_listed_for_the_patient(
        settings: Settings, trail: AuditTrail) -> None:
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    try:
        msg = parse(er_message(3, when=datetime.now(ZoneInfo("America/Montreal"))))
        result = map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime.now(UTC)))
        store.upsert_many(result.resources)  # as the store sink does
        pid = str(result.patient_id)
        enroll(store, pid, case_manager="cm-7")
        assert DefiSanteRules(store, settings).on_mapped(result, now_iso())  # no trail: alerts, no AuditEvent
        # the same message again (a worker that crashed before its commit) raises the same alert again
        out = DefiSanteRules(store, settings, audit=trail).on_mapped(result, now_iso())
        comms = [json.loads(o.value)["resource"] for o in out if o.topic == "pivot.fhir.Communication"]
    finally:
        store.close()
    trail.close()  # drains the queue
    (comm,) = comms
    (event,) = _events(settings, pid)
    _check_shape(event)
    assert (event["subtype"][0]["code"], event["action"], event["outcome"]) == ("alert", "C", "0")
    assert _refs(event, "1") == [f"Patient/{pid}"]
    assert _refs(event, "4") == [f"Communication/{comm['id']}"]
    assert _recipients(event) == [r["reference"] for r in comm["recipient"]]
    assert "Practitioner/cm-7" in _recipients(event)
    detail = next(e for e in event["entity"] if e["role"]["code"] == "4")["detail"]
    assert detail == [{"type": "kind", "valueString": "er-arrival"}]
    text = json.dumps(event)
    for health_data in ("Douleur", "thoracique", comm["payload"][0]["contentString"], "RAMQ", "Encounter/"):
        assert health_data not in text
    line = _cli(settings, pid).strip()
    assert "alert" in line
    assert "client=pivot" in line
    assert "to=Practitioner/cm-7" in line
    assert f"Communication/{comm['id']}" in line


# -- pharmacy rules ------------------------------------------------------------------------------
@pytest.fixture
def pharmacy_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FhirStore]:
    yield from open_store(tmp_path, monkeypatch)


def test_a_pharmacy_alert_is_audited(settings: Settings, trail: AuditTrail, pharmacy_store: FhirStore) -> None:
    rules = PharmacyRules(pharmacy_store, settings, audit=trail)
    first, out = feed(rules, dispense("E0", "99100065", "Tiotropium", "20260201100000", rx="E0", days="90"),
                      "2026-02-01T16:00:00Z")
    assert not [o for o in out if o.topic == "pivot.defisante.alerts"]  # not enrolled: no alert, no AuditEvent
    pid = str(first.patient_id)
    enroll(pharmacy_store, pid)
    _r, out = feed(rules, dispense("H1", "99100001", "Oxycodone 5 mg", "20260301100000", rx="RX1"),
                   "2026-03-01T16:00:00Z")
    (comm,) = [json.loads(o.value)["resource"] for o in out if o.topic == "pivot.fhir.Communication"]
    _r, again = feed(rules, dispense("H1-RESENT", "99100001", "Oxycodone 5 mg", "20260301100000", rx="RX1"),
                     "2026-03-01T18:00:00Z")
    assert not [o for o in again if o.topic == "pivot.fhir.Communication"]  # a resend raises nothing
    trail.close()
    (event,) = _events(settings)
    _check_shape(event)
    assert event["subtype"][0]["code"] == "alert"
    assert _refs(event, "1") == [f"Patient/{pid}"]
    assert _refs(event, "4") == [f"Communication/{comm['id']}"]
    assert _recipients(event) == ["Practitioner/cm-1"]
    assert next(e for e in event["entity"] if e["role"]["code"] == "4")["detail"][0]["valueString"] == \
        "pharmacy-high-risk"
    assert "Oxycodone" not in json.dumps(event)
    assert "alert" in _cli(settings, pid)


# -- subscription notifications ------------------------------------------------------------------
@pytest.fixture
def engine_env(settings: Settings, trail: AuditTrail) -> Iterator[tuple[FhirStore, SubscriptionEngine, Receiver]]:
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    engine = SubscriptionEngine(store, SubscriptionConfig(
        base_url="http://testserver/fhir", state_path=settings.data_dir / "subscriptions.sqlite", retry=FAST,
        timeout_s=2.0, allow_private=True, audit=trail))
    engine.start()
    receiver = Receiver().start()
    yield store, engine, receiver
    receiver.stop()
    engine.stop()
    store.close()


def test_each_notification_accepted_or_failed_is_audited(
        settings: Settings, trail: AuditTrail, engine_env: tuple[FhirStore, SubscriptionEngine, Receiver]) -> None:
    store, engine, receiver = engine_env
    store.update(subscription(receiver.url, content="full-resource", owner="gmf-nord", program_wide=True,
                              headers=(f"Authorization: {SECRET}",)) | {"id": "sub-gmf"})
    receiver.wait(lambda hits: len(hits) >= 1)  # the handshake: about no patient, not audited
    store.upsert_many([care_plan(1, "pat-1")])
    assert engine.flush()
    receiver.wait(lambda hits: len(hits) >= 2)
    receiver.answers = [503]  # the next notification is refused once, then accepted
    store.upsert_many([care_plan(2, "pat-2")])
    assert engine.flush()
    receiver.wait(lambda hits: len(hits) >= 3)
    _wait(lambda: len(_events(settings)) >= 3)
    engine.stop()
    trail.close()

    (first,) = _events(settings, "pat-1")
    _check_shape(first)
    assert (first["subtype"][0]["code"], first["action"], first["outcome"]) == ("notification", "R", "0")
    assert _refs(first, "1") == ["Patient/pat-1"]
    assert _refs(first, "4") == ["Subscription/sub-gmf", "CarePlan/plan-1/_history/1"]
    assert _recipients(first) == ["Organization/gmf-nord"]
    details = {d["type"]: d["valueString"] for d in first["entity"][1]["detail"]}
    assert details == {"notification-type": "event-notification", "content": "full-resource", "event-numbers": "1"}

    failed, accepted = _events(settings, "pat-2")
    assert (failed["outcome"], failed["outcomeDesc"]) == ("4", "HTTP 503")
    assert (accepted["outcome"], accepted["outcomeDesc"]) == ("0", "accepted")
    for event in (failed, accepted):
        _check_shape(event)
        assert _refs(event, "1") == ["Patient/pat-2"]
        assert _refs(event, "4") == ["Subscription/sub-gmf", "CarePlan/plan-2/_history/1"]
        assert {d["type"]: d["valueString"] for d in event["entity"][1]["detail"]}["event-numbers"] == "2"
    everything = json.dumps(_events(settings))
    for secret in (SECRET, "s3cr3t", CANARY, receiver.url, f":{receiver.port}"):
        assert secret not in everything  # the resources went to the endpoint, not into the audit trail
    lines = _cli(settings, "Patient/pat-2").splitlines()
    assert [line.split()[1] for line in lines] == ["denied/failed", "success"]
    assert all("notification" in line and "to=Organization/gmf-nord" in line for line in lines)


def test_a_delivery_refused_by_the_endpoint_check_is_audited_as_failed(settings: Settings, trail: AuditTrail) -> None:
    answers = iter([["93.184.216.34"]])  # public when the Subscription is written, loopback afterwards

    def resolver(host: str, port: int) -> list[str]:
        return next(answers, ["127.0.0.1"])

    store = FhirStore(settings.data_dir / "fhir.sqlite")
    engine = SubscriptionEngine(store, SubscriptionConfig(
        base_url="http://testserver/fhir", state_path=settings.data_dir / "subscriptions.sqlite", retry=FAST,
        audit=trail, resolver=resolver))
    engine.start()
    try:
        sub = subscription("http://hooks.example.test/notify", "CarePlan?status=active", content=None,
                           program_wide=True) | {"id": "sub-x"}
        engine.check_write(sub)  # what the FHIR API runs before storing it: accepted
        store.update(sub)
        store.upsert_many([care_plan(1, "pat-9")])
        assert engine.flush()
        _wait(lambda: len(_events(settings, "pat-9")) >= 1)
    finally:
        engine.stop()
        store.close()
    event = _events(settings, "pat-9")[0]
    _check_shape(event)
    assert (event["outcome"], event["outcomeDesc"]) == ("4", "endpoint refused: loopback address")
    assert _recipients(event) == ["subscriber of Subscription/sub-x"]  # program-wide, no owner


def test_a_notification_of_several_events_names_each_focus_and_the_range() -> None:
    record = notification_disclosure(subscription="s1", owner=None, kind="event-notification", content="id-only",
                                     focus=("Flag/f1/_history/2", "Flag/f2/_history/1"), numbers=(7, 8),
                                     patients=("Patient/a", "Patient/b", "Patient/a"), error="ConnectError")
    event, patients = build_disclosure_event(record)
    validate(event)
    assert patients == ["Patient/a", "Patient/b"]
    assert _refs(event, "4") == ["Subscription/s1", "Flag/f1/_history/2", "Flag/f2/_history/1"]
    assert {d["type"]: d["valueString"] for d in event["entity"][2]["detail"]}["event-numbers"] == "7-8"
    assert (event["outcome"], event["outcomeDesc"]) == ("4", "ConnectError")

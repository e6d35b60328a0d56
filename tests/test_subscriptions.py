"""FHIR Subscriptions end to end: a real HTTP subscriber, writes through upsert_many and /fhir.

The subscriber is a real ``http.server`` on a loopback port (stopped and restarted on the same
port to play an endpoint that goes down and comes back). Subscriptions are created through the
FHIR API; resources are written the way the store sink writes them (``upsert_many``) and through
the HTTP API. Retry delays are shortened (error after 3 failures, slow retry 0.3 s).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from gateway.fhirstore import FhirStore
from gateway.http import make_fhir_router
from gateway.subscriptions import (
    Delivered,
    RetryPolicy,
    SubscriptionConfig,
    SubscriptionEngine,
    make_subscription_router,
)
from gateway.subscriptions.model import BACKPORT, EXT_CONTENT, EXT_FILTER, EXT_OWNER, EXT_PROGRAM_WIDE
from tests.test_fhirstore_data import encounter

JSON = dict[str, Any]
TOPICS = "https://pivot.example.org/fhir/SubscriptionTopic"
CARE_PLAN, FLAG, ER = f"{TOPICS}/care-plan-changed", f"{TOPICS}/flag-changed", f"{TOPICS}/er-arrival"
DS = "https://pivot.example.org/fhir/CodeSystem/defi-sante"
SECRET = "Bearer s3cr3t-t0ken-Xq9"
CANARY = "Canarifamille"


# -- the subscriber -----------------------------------------------------------------------------
@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: JSON | None


@dataclass
class Receiver:
    """A real HTTP endpoint recording what it accepts; ``answers`` queues status codes to give."""

    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    refused: int = 0
    answers: list[int] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length) if length else b""
                with receiver.cond:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    if status < 300:
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        receiver.hits.append(Hit(self.command, self.path, headers, json.loads(raw) if raw else None))
                    else:
                        receiver.refused += 1
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _handle

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait(self, pred: Callable[[list[Hit]], bool], timeout_s: float = 10.0) -> list[Hit]:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.hits), timeout_s), f"got {[_kind(h) for h in self.hits]}"
            return list(self.hits)

    def notifications(self, kind: str = "event-notification") -> list[JSON]:
        with self.cond:
            return [h.body for h in self.hits if h.body is not None and _kind(h) == kind]


def _status(bundle: JSON) -> dict[str, Any]:
    """The SubscriptionStatus of a notification, as a dict (events as a list of dicts)."""
    out: dict[str, Any] = {"events": []}
    for p in bundle["entry"][0]["resource"]["parameter"]:
        if p["name"] == "notification-event":
            out["events"].append({part["name"]: next(v for k, v in part.items() if k.startswith("value"))
                                  for part in p["part"]})
        else:
            out[p["name"]] = next(v for k, v in p.items() if k.startswith("value"))
    return out


def _kind(hit: Hit) -> str:
    if hit.body is None or hit.body.get("resourceType") != "Bundle":
        return f"{hit.method} {hit.path}"
    return str(_status(hit.body)["type"])


def _numbers(bundles: list[JSON]) -> list[int]:
    return [int(e["event-number"]) for b in bundles for e in _status(b)["events"]]


def _has(kind: str, n: int = 1) -> Callable[[list[Hit]], bool]:
    return lambda hits: sum(1 for h in hits if _kind(h) == kind) >= n


def _events(n: int) -> Callable[[list[Hit]], bool]:
    """At least ``n`` events received (several may come in one notification)."""
    return lambda hits: len(_numbers([h.body for h in hits if h.body and _kind(h) == "event-notification"])) >= n


# -- the gateway side ---------------------------------------------------------------------------
@dataclass
class Env:
    store: FhirStore
    engine: SubscriptionEngine
    client: TestClient
    receiver: Receiver

    def subscribe(self, resource: JSON) -> str:
        resp = self.client.post("/fhir/Subscription", json=resource)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    def read(self, sid: str) -> JSON:
        resp = self.client.get(f"/fhir/Subscription/{sid}")
        assert resp.status_code == 200
        body: JSON = resp.json()
        return body

    def wait_status(self, sid: str, status: str, timeout_s: float = 10.0) -> JSON:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.read(sid)
            if body["status"] == status:
                return body
            time.sleep(0.02)
        raise AssertionError(f"subscription stayed {self.read(sid)['status']}")

    def write(self, *resources: JSON) -> None:
        """As the store sink does: one upsert_many batch, then wait for the events to be queued."""
        self.store.upsert_many(list(resources))
        assert self.engine.flush()


FAST = RetryPolicy(initial_s=0.05, factor=2.0, max_s=0.2, error_after=3, slow_s=0.3)


def _make_engine(store: FhirStore, tmp_path: Path) -> SubscriptionEngine:
    config = SubscriptionConfig(base_url="http://testserver/fhir", state_path=tmp_path / "subscriptions.sqlite",
                                retry=FAST, timeout_s=2.0, allow_private=True)  # loopback receivers
    engine = SubscriptionEngine(store, config)
    engine.start()
    return engine


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    store = FhirStore(tmp_path / "fhir.sqlite")
    engine = _make_engine(store, tmp_path)
    app = FastAPI()
    app.include_router(make_subscription_router(lambda: engine), prefix="/fhir")
    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    receiver = Receiver().start()
    running = Env(store, engine, TestClient(app, raise_server_exceptions=False), receiver)
    yield running
    receiver.stop()
    running.engine.stop()
    store.close()


def subscription(endpoint: str, criteria: str = CARE_PLAN, *, content: str | None = "id-only",
                 owner: str | None = None, program_wide: bool = False, headers: tuple[str, ...] = (),
                 filters: tuple[str, ...] = (), heartbeat: int | None = None, status: str = "requested") -> JSON:
    channel: JSON = {"type": "rest-hook", "endpoint": endpoint}
    if content is not None:
        channel["payload"] = "application/fhir+json"
        channel["_payload"] = {"extension": [{"url": EXT_CONTENT, "valueCode": content}]}
    if headers:
        channel["header"] = list(headers)
    if heartbeat is not None:
        channel["extension"] = [{"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}]
    ext: list[JSON] = []
    if owner:
        ext.append({"url": EXT_OWNER, "valueReference": {"reference": f"Organization/{owner}"}})
    if program_wide:
        ext.append({"url": EXT_PROGRAM_WIDE, "valueBoolean": True})
    sub: JSON = {"resourceType": "Subscription", "status": status, "reason": "Défi Santé follow-up",
                 "criteria": criteria, "channel": channel}
    if ext:
        sub["extension"] = ext
    if filters:
        sub["_criteria"] = {"extension": [{"url": EXT_FILTER, "valueString": f} for f in filters]}
    if criteria.startswith(TOPICS):
        sub["meta"] = {"profile": [f"{BACKPORT}/backport-subscription"]}
    return sub


def care_plan(n: int, patient: str, status: str = "active", category: str = "defi-sante") -> JSON:
    return {"resourceType": "CarePlan", "id": f"plan-{n}", "status": status, "intent": "plan",
            "category": [{"coding": [{"system": DS, "code": category}]}],
            "subject": {"reference": f"Patient/{patient}"}, "title": f"Plan de services {CANARY}"}


def flag(n: int, patient: str, status: str = "active") -> JSON:
    return {"resourceType": "Flag", "id": f"flag-{n}", "status": status,
            "code": {"coding": [{"system": DS, "code": "defi-sante"}]}, "subject": {"reference": f"Patient/{patient}"}}


def care_team(patient: str, *orgs: str, on_behalf: bool = False) -> JSON:
    members = [{"member": {"reference": "Practitioner/dr-cote"}, "onBehalfOf": {"reference": f"Organization/{o}"}}
               if on_behalf else {"member": {"reference": f"Organization/{o}"}} for o in orgs]
    return {"resourceType": "CareTeam", "id": f"team-{patient}", "status": "active",
            "subject": {"reference": f"Patient/{patient}"},
            "participant": members or [{"member": {"reference": "Practitioner/dr-cote"}}]}


def communication(n: int, patient: str, category: str = "alert") -> JSON:
    return {"resourceType": "Communication", "id": f"comm-{n}", "status": "completed",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                      "code": category}]}],
            "subject": {"reference": f"Patient/{patient}"}, "payload": [{"contentString": f"Arrivée {CANARY}"}]}


def _valid(bundle: JSON) -> None:
    get_fhir_model_class("Bundle").model_validate(bundle)


# -- topic-based: handshake, events, content modes -----------------------------------------------
def test_handshake_then_numbered_notifications_from_upsert_many_and_http(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, program_wide=True))
    env.receiver.wait(_has("handshake"))
    sub = env.wait_status(sid, "active")
    assert "error" not in sub
    handshake = env.receiver.notifications("handshake")[0]
    _valid(handshake)
    assert _status(handshake)["events-since-subscription-start"] == "0"

    env.write(care_plan(1, "pat-1"))  # like the store sink
    env.receiver.wait(_has("event-notification"))
    resp = env.client.put("/fhir/CarePlan/plan-1", json=care_plan(1, "pat-1", status="completed"))  # the HTTP API
    assert resp.status_code == 200
    env.client.post("/fhir/CarePlan", json=care_plan(2, "pat-2", category="autre"))  # not Défi Santé: no event
    env.receiver.wait(_events(2))
    assert env.engine.flush()

    bundles = env.receiver.notifications()
    assert _numbers(bundles) == [1, 2]
    first = bundles[0]
    _valid(first)
    assert first["type"] == "history"
    status = _status(first)
    assert status["topic"] == CARE_PLAN
    assert status["subscription"]["reference"] == f"http://testserver/fhir/Subscription/{sid}"
    assert status["events-since-subscription-start"] == "1"
    assert status["events"][0]["focus"]["reference"] == "http://testserver/fhir/CarePlan/plan-1"
    entry = first["entry"][1]  # id-only: reference and request, no resource
    assert entry["fullUrl"] == "http://testserver/fhir/CarePlan/plan-1"
    assert entry["request"] == {"method": "POST", "url": "CarePlan"}
    assert "resource" not in entry
    assert bundles[1]["entry"][1]["request"] == {"method": "PUT", "url": "CarePlan/plan-1"}
    assert len(env.receiver.notifications()) == 2


def test_content_modes_empty_id_only_full_resource(env: Env) -> None:
    ids = {mode: env.subscribe(subscription(f"{env.receiver.url}/{mode}", FLAG, content=mode, program_wide=True))
           for mode in ("empty", "id-only", "full-resource")}
    env.receiver.wait(_has("handshake", 3))
    for sid in ids.values():
        env.wait_status(sid, "active")
    env.write(flag(1, "pat-1"))
    hits = env.receiver.wait(_has("event-notification", 3))
    by_mode = {h.path.rsplit("/", 1)[-1]: h.body for h in hits if _kind(h) == "event-notification"}
    assert set(by_mode) == set(ids)
    for bundle in by_mode.values():
        assert bundle is not None
        _valid(bundle)
    empty, id_only, full = by_mode["empty"], by_mode["id-only"], by_mode["full-resource"]
    assert empty is not None
    assert id_only is not None
    assert full is not None
    assert len(empty["entry"]) == 1
    assert "focus" not in _status(empty)["events"][0]
    assert len(id_only["entry"]) == 2
    assert "resource" not in id_only["entry"][1]
    assert full["entry"][1]["resource"]["id"] == "flag-1"
    assert full["entry"][1]["resource"]["meta"]["versionId"] == "1"


def test_er_arrival_topic_fires_on_arrival_only_and_filters_by_patient(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, ER, program_wide=True,
                                     filters=("Encounter?patient=Patient/pat-1",)))
    env.wait_status(sid, "active")
    env.write(encounter(1, "pat-1", status="in-progress"),  # arrival of pat-1: event
              encounter(2, "pat-2", status="in-progress"),  # another client: filtered out
              encounter(3, "pat-1", status="in-progress", cls="IMP"))  # not an ER visit
    env.write(encounter(1, "pat-1", status="finished"))  # discharge: not an arrival
    env.write(encounter(4, "pat-1", status="planned"))  # pre-registration
    env.write(encounter(4, "pat-1", status="in-progress"))  # … then the arrival: event
    env.receiver.wait(_events(2))
    time.sleep(0.2)
    bundles = env.receiver.notifications()
    assert _numbers(bundles) == [1, 2]
    focus = [e["focus"]["reference"].rsplit("/", 1)[-1] for b in bundles for e in _status(b)["events"]]
    assert focus == ["enc-1", "enc-4"]


def test_plain_r4_criteria_rest_hook(env: Env) -> None:
    with_payload = env.subscribe(subscription(f"{env.receiver.url}/full", "Communication?category=alert",
                                              content=None, program_wide=True)
                                 | {"channel": {"type": "rest-hook", "endpoint": f"{env.receiver.url}/full",
                                                "payload": "application/fhir+json"}})
    empty = env.subscribe(subscription(f"{env.receiver.url}/ping", "Communication?category=alert", content=None,
                                       program_wide=True))
    env.wait_status(with_payload, "active")
    env.wait_status(empty, "active")
    env.write(communication(1, "pat-1"), communication(2, "pat-1", category="notification"))
    hits = env.receiver.wait(lambda hs: len(hs) >= 2)
    time.sleep(0.2)
    assert sorted((h.method, h.path) for h in env.receiver.hits) == [("POST", "/hook/ping"),
                                                                     ("PUT", "/hook/full/Communication/comm-1")]
    put = next(h for h in hits if h.method == "PUT")
    assert put.body is not None
    assert put.body["id"] == "comm-1"
    assert put.headers["content-type"].startswith("application/fhir+json")
    assert next(h for h in hits if h.method == "POST").body is None


def test_plain_criteria_with_backport_content_gets_numbered_bundles(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, "Communication?category=alert", content="full-resource",
                                     program_wide=True))
    env.receiver.wait(_has("handshake"))
    env.wait_status(sid, "active")
    env.write(communication(1, "pat-1"))
    env.receiver.wait(_events(1))
    bundle = env.receiver.notifications()[0]
    _valid(bundle)
    assert "topic" not in _status(bundle)  # not a published topic: no canonical to name
    assert bundle["entry"][1]["resource"]["id"] == "comm-1"


# -- gaps, failures, recovery --------------------------------------------------------------------
def test_gap_detected_and_recovered_with_events_and_status(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, program_wide=True))
    env.wait_status(sid, "active")
    for n in (1, 2, 3):
        env.write(care_plan(n, f"pat-{n}"))
        env.receiver.wait(_has("event-notification", n))
    with env.receiver.cond:  # the subscriber lost the second notification
        env.receiver.hits = [h for h in env.receiver.hits
                             if not (_kind(h) == "event-notification" and h.body and _numbers([h.body]) == [2])]
    seen = _numbers(env.receiver.notifications())
    missing = [n for n in range(1, max(seen) + 1) if n not in seen]
    assert missing == [2]

    resp = env.client.get(f"/fhir/Subscription/{sid}/$events",
                          params={"eventsSinceNumber": "2", "eventsUntilNumber": "2", "content": "full-resource"})
    assert resp.status_code == 200, resp.text
    recovered = resp.json()
    _valid(recovered)
    assert _status(recovered)["type"] == "query-event"
    assert _numbers([recovered]) == [2]
    assert recovered["entry"][1]["resource"]["id"] == "plan-2"
    post = env.client.post(f"/fhir/Subscription/{sid}/$events",
                           json={"resourceType": "Parameters", "parameter": [{"name": "eventsSinceNumber",
                                                                              "valueString": "1"}]})
    assert _numbers([post.json()]) == [1, 2, 3]

    status = env.client.get(f"/fhir/Subscription/{sid}/$status").json()
    _valid(status)
    assert status["type"] == "searchset"
    assert _status(status)["events-since-subscription-start"] == "3"
    assert _status(status)["status"] == "active"
    assert env.client.get(f"/fhir/Subscription/{sid}/$events", params={"eventsSinceNumber": "x"}).status_code == 400
    assert env.client.get("/fhir/Subscription/nope/$status").status_code == 404


def test_refused_twice_with_500_still_delivered(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, FLAG, program_wide=True))
    env.wait_status(sid, "active")
    env.receiver.answers = [500, 500]
    env.write(flag(1, "pat-1"))
    env.receiver.wait(_has("event-notification"))
    assert env.receiver.refused == 2
    assert env.read(sid)["status"] == "active"
    assert _numbers(env.receiver.notifications()) == [1]


def test_endpoint_down_error_then_back_active_with_missed_events(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, program_wide=True))
    env.wait_status(sid, "active")
    env.receiver.stop()
    env.write(care_plan(1, "pat-1"))
    env.write(care_plan(2, "pat-2"))
    failed = env.wait_status(sid, "error")
    assert failed["error"].startswith("3 delivery attempts failed; last: ")
    assert "ConnectError" in failed["error"]
    assert _status(env.client.get(f"/fhir/Subscription/{sid}/$status").json())["error"]["text"] == failed["error"]
    env.write(care_plan(3, "pat-3"))  # still recorded while in error

    env.receiver.start()  # same port
    env.receiver.wait(lambda hits: sorted(_numbers([h.body for h in hits if h.body])) == [1, 2, 3])
    back = env.wait_status(sid, "active")
    assert "error" not in back
    assert _numbers(env.receiver.notifications()) == [1, 2, 3]  # in order, none twice


def test_dead_endpoint_from_the_start_is_error_and_recovers_with_handshake(env: Env) -> None:
    env.receiver.stop()
    sid = env.subscribe(subscription(env.receiver.url, program_wide=True))
    assert "attempts failed" in env.wait_status(sid, "error")["error"]
    env.receiver.start()
    env.receiver.wait(_has("handshake"))
    env.wait_status(sid, "active")


def test_heartbeat(env: Env) -> None:
    sid = env.subscribe(subscription(env.receiver.url, FLAG, program_wide=True, heartbeat=1))
    env.wait_status(sid, "active")
    env.receiver.wait(_has("heartbeat"), timeout_s=5)
    assert _status(env.receiver.notifications("heartbeat")[0])["events-since-subscription-start"] == "0"


# -- authorisation -------------------------------------------------------------------------------
def test_subscriber_outside_the_care_team_receives_nothing(env: Env) -> None:
    member = Receiver().start()
    outsider = Receiver().start()
    try:
        in_team = env.subscribe(subscription(member.url, owner="clsc-nord"))
        out_team = env.subscribe(subscription(outsider.url, owner="gmf-sud"))
        # without an owner and not program-wide it would never be told anything: refused (issue #16)
        refused = env.client.post("/fhir/Subscription", json=subscription(f"{outsider.url}/anon"))
        assert refused.status_code == 422
        assert "never be notified" in refused.json()["issue"][0]["diagnostics"]
        program = env.subscribe(subscription(env.receiver.url, program_wide=True))
        for sid in (in_team, out_team, program):
            env.wait_status(sid, "active")
        env.write(care_team("pat-1", "clsc-nord"), care_team("pat-2", "clsc-nord", on_behalf=True),
                  care_team("pat-3", "hopital"))
        env.write(care_plan(1, "pat-1"), care_plan(2, "pat-2"), care_plan(3, "pat-3"))
        env.receiver.wait(_events(3))
        member.wait(_events(2))
        time.sleep(0.3)
        assert sorted(_numbers(env.receiver.notifications())) == [1, 2, 3]
        member_focus = [e["focus"]["reference"] for b in member.notifications() for e in _status(b)["events"]]
        assert sorted(r.rsplit("/", 1)[-1] for r in member_focus) == ["plan-1", "plan-2"]
        assert outsider.notifications() == []
        assert _status(env.client.get(f"/fhir/Subscription/{out_team}/$status").json())[
            "events-since-subscription-start"] == "0"
        assert _numbers([env.client.get(f"/fhir/Subscription/{out_team}/$events").json()]) == []
    finally:
        member.stop()
        outsider.stop()


# -- secrets and health data stay out of logs ----------------------------------------------------
def test_headers_sent_but_never_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sid = env.subscribe(subscription(env.receiver.url, content="full-resource", program_wide=True,
                                     headers=(f"Authorization: {SECRET}", "X-Clinic: gmf-nord")))
    env.wait_status(sid, "active")
    env.write(care_plan(1, "pat-1"))
    hits = env.receiver.wait(_has("event-notification"))
    assert all(h.headers["authorization"] == SECRET and h.headers["x-clinic"] == "gmf-nord" for h in hits)
    env.receiver.answers = [503] * 3
    env.write(care_plan(2, "pat-2"))
    env.wait_status(sid, "error")
    env.receiver.wait(_has("event-notification", 2))
    env.wait_status(sid, "active")
    text = caplog.text
    assert "subscription" in text  # the engine did log
    for secret in ("s3cr3t", SECRET, CANARY, env.receiver.url, str(env.receiver.port)):
        assert secret not in text
    assert "s3cr3t" not in json.dumps(_status(env.client.get(f"/fhir/Subscription/{sid}/$status").json()))
    spec = env.engine._specs[sid]
    assert "s3cr3t" not in repr(spec)


# -- lifecycle -----------------------------------------------------------------------------------
def test_invalid_subscription_is_set_to_error_and_off_or_deleted_gets_nothing(env: Env) -> None:
    bad = env.subscribe(subscription(env.receiver.url, f"{TOPICS}/no-such-topic"))
    assert env.wait_status(bad, "error")["error"] == "Subscription.criteria: unknown topic"
    bad_filter = env.subscribe(subscription(env.receiver.url, filters=("CarePlan?title=x",)))
    assert "filter 0" in env.wait_status(bad_filter, "error")["error"]

    sid = env.subscribe(subscription(env.receiver.url, program_wide=True))
    env.wait_status(sid, "active")
    sub = env.read(sid)
    env.client.put(f"/fhir/Subscription/{sid}", json=sub | {"status": "off"})
    env.write(care_plan(1, "pat-1"))
    sub = env.read(sid)
    assert sub["status"] == "off"
    env.client.put(f"/fhir/Subscription/{sid}", json=sub | {"status": "requested"})
    env.receiver.wait(_has("handshake", 2))
    env.wait_status(sid, "active")
    env.write(care_plan(2, "pat-1"))
    env.receiver.wait(_has("event-notification"))
    assert _numbers(env.receiver.notifications()) == [1]  # nothing recorded while off
    assert env.client.delete(f"/fhir/Subscription/{sid}").status_code == 200
    env.write(care_plan(3, "pat-1"))
    time.sleep(0.2)
    assert _numbers(env.receiver.notifications()) == [1]
    assert env.client.get(f"/fhir/Subscription/{sid}/$status").status_code == 410


def test_restart_resumes_undelivered_events(env: Env, tmp_path: Path) -> None:
    sid = env.subscribe(subscription(env.receiver.url, program_wide=True))
    env.wait_status(sid, "active")
    env.receiver.stop()
    env.write(care_plan(1, "pat-1"))
    env.engine.stop()
    env.receiver.start()
    env.engine = engine = _make_engine(env.store, tmp_path)
    env.receiver.wait(_has("event-notification"))
    assert _numbers(env.receiver.notifications()) == [1]
    engine.flush()
    env.write(care_plan(2, "pat-1"))
    env.receiver.wait(_has("event-notification", 2))
    assert _numbers(env.receiver.notifications()) == [1, 2]


# -- the real path: HL7v2 in → mapping worker → store sink (upsert_many) → notification ----------
def test_hl7v2_er_arrival_through_the_store_sink(tmp_path: Path) -> None:
    from connectors.base import Origin
    from gateway.app import Gateway
    from gateway.drain import wait_drained
    from gateway.samples import er_message
    from gateway.settings import load_settings

    gateway = Gateway(load_settings(data_dir=tmp_path / "var"))
    audited: list[Delivered] = []
    engine = SubscriptionEngine(gateway.store, SubscriptionConfig(
        base_url="http://127.0.0.1:8080/fhir", state_path=tmp_path / "var" / "subscriptions.sqlite", retry=FAST,
        on_delivered=audited.append, allow_private=True))
    gateway.subscriptions = engine  # the gateway's own engine, with fast retries and the audit seam
    gateway.start_workers()
    receiver = Receiver().start()
    outsider = Receiver().start()
    try:
        gateway.store.update(subscription(receiver.url, ER, content="full-resource", program_wide=True)
                             | {"id": "er-program"})
        gateway.store.update(subscription(outsider.url, ER, owner="gmf-sud") | {"id": "er-gmf"})
        receiver.wait(_has("handshake"))
        origin = Origin("test", "unit")
        for i in range(2):
            assert gateway.intake.receive(er_message(i), origin).code == "AA"
        assert gateway.intake.receive(er_message(0), origin).code == "AA"  # resent: nothing new
        assert wait_drained(gateway, timeout_s=60)
        assert engine.flush()
        receiver.wait(_events(2))
        time.sleep(0.3)
        bundles = receiver.notifications()
        assert sorted(_numbers(bundles)) == [1, 2]
        resources = [e["resource"] for b in bundles for e in b["entry"][1:]]
        assert {r["resourceType"] for r in resources} == {"Encounter"}
        assert all(r["class"]["code"] == "EMER" for r in resources)
        assert outsider.notifications() == []  # not in any care team of these clients
        focus = [f for d in audited for f in d.focus]  # the audit seam: references only
        assert len(focus) == 2
        assert all(f.startswith("Encounter/") and "/_history/" in f for f in focus)
        assert {(d.sub_id, d.content) for d in audited} == {("er-program", "full-resource")}
    finally:
        receiver.stop()
        outsider.stop()
        engine.stop()
        gateway.close()

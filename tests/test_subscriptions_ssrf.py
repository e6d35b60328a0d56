"""The channel of a Subscription is the subscriber's: where Pivot may call (SSRF), and its secrets.

- ``channel.endpoint`` must be http(s) and resolve to public addresses only (no loopback,
  link-local — cloud metadata —, private, unspecified…): a client's create or update of another
  endpoint is a 422 OperationOutcome naming the problem (plain writes, transactions, batches), and
  every delivery checks again and goes to the address it checked (a DNS answer that changes to
  127.0.0.1 where a real receiver listens gets nothing through). ``allow_private`` (the setting
  PIVOT_SUBSCRIPTION_ALLOW_PRIVATE) lifts the address checks, not the scheme check.
- ``channel.header`` values come back as ``***`` from every FHIR API answer, the engine sends the
  real ones, and a Subscription read and written back keeps them.

Host names are resolved by a resolver given to the engine (no real DNS); receivers are real HTTP
servers on loopback.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.fhirstore import FhirStore
from gateway.fhirstore.secrets import keep_secrets, mask_secrets
from gateway.http import make_fhir_router
from gateway.subscriptions import SubscriptionConfig, SubscriptionEngine, make_subscription_router
from gateway.subscriptions.endpoint import EndpointGuard, EndpointRefused, address_problem
from tests.test_subscriptions import FAST, SECRET, Receiver, care_plan, communication, subscription
from tests.test_subscriptions import Env as SubscriptionsEnv

JSON = dict[str, Any]
PUBLIC = "93.184.216.34"


class Resolver:
    """host → addresses; ``answers`` may be a list per host, consumed one call at a time (the last stays)."""

    def __init__(self, **answers: list[str] | list[list[str]]) -> None:
        self.answers: dict[str, list[list[str]]] = {
            host.replace("_", "."): (value if value and isinstance(value[0], list) else [value])
            for host, value in answers.items()}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        queue = self.answers.get(host)
        if not queue:
            raise OSError("no such host")
        return queue.pop(0) if len(queue) > 1 else queue[0]


class Env(SubscriptionsEnv):
    """The subscriptions test environment, plus reading an OperationOutcome and waiting."""

    def outcome(self, resp: Any) -> str:
        body: JSON = resp.json()
        assert body["resourceType"] == "OperationOutcome"
        return str(body["issue"][0]["diagnostics"])

    def wait(self, pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)


def _env(tmp_path: Path, resolver: Resolver, *, allow_private: bool) -> Iterator[Env]:
    store = FhirStore(tmp_path / "fhir.sqlite")
    engine = SubscriptionEngine(store, SubscriptionConfig(
        base_url="http://testserver/fhir", state_path=tmp_path / "subscriptions.sqlite", retry=FAST, timeout_s=2.0,
        allow_private=allow_private, resolver=resolver))
    engine.start()
    app = FastAPI()
    app.include_router(make_subscription_router(lambda: engine), prefix="/fhir")
    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    receiver = Receiver().start()
    yield Env(store, engine, TestClient(app, raise_server_exceptions=False), receiver)
    receiver.stop()
    engine.stop()
    store.close()


@pytest.fixture
def resolver() -> Resolver:
    return Resolver(localhost=["::1", "127.0.0.1"], hooks_clinique_example_org=[PUBLIC],
                    metadata_example_test=["169.254.169.254"],
                    intranet_example_test=["10.20.30.40"], mixed_example_test=[PUBLIC, "192.168.1.9"],
                    v6_example_test=["fd00:ec2::254"])


@pytest.fixture
def strict(tmp_path: Path, resolver: Resolver) -> Iterator[Env]:
    """The production policy: private addresses refused."""
    yield from _env(tmp_path, resolver, allow_private=False)


@pytest.fixture
def lenient(tmp_path: Path) -> Iterator[Env]:
    """PIVOT_SUBSCRIPTION_ALLOW_PRIVATE=true; subscriber.example.test is the loopback receiver."""
    yield from _env(tmp_path, Resolver(subscriber_example_test=["127.0.0.1"]), allow_private=True)


# -- the address policy --------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "problem"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.0.10", "private"), ("fd00:ec2::254", "private"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.251", "multicast"),
    ("100.64.0.1", "non-public"), ("198.18.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),  # IPv4 carried in IPv6
    ("64:ff9b::a9fe:a9fe", "link-local"), ("2002:7f00:1::1", "loopback"),  # NAT64, 6to4
    (PUBLIC, None), ("2606:2800:220:1::1", None), ("8.8.8.8", None),
])
def test_addresses_that_are_not_public_are_named(address: str, problem: str | None) -> None:
    found = address_problem(ipaddress.ip_address(address))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)


def test_the_guard_checks_every_address_and_pins_the_one_it_checked() -> None:
    guard = EndpointGuard(resolver=Resolver(a_example_org=[PUBLIC, "2606:2800:220:1::1"],
                                            b_example_org=[PUBLIC, "10.1.1.1"]))
    first, second = guard.targets("https://a.example.org:8443/hook?x=1")
    assert (first.url, first.host, first.server_name) == (f"https://{PUBLIC}:8443/hook?x=1", "a.example.org:8443",
                                                          "a.example.org")
    assert second.url == "https://[2606:2800:220:1::1]:8443/hook?x=1"
    assert guard.targets("http://a.example.org/h")[0].server_name is None  # no TLS, no server name
    with pytest.raises(EndpointRefused, match="private address"):
        guard.targets("https://b.example.org/hook")  # one private address is enough to refuse
    for bad in ("ftp://a.example.org/x", "mailto:x@a.example.org", "/relative", "https://"):
        with pytest.raises(EndpointRefused, match="must be an http"):
            guard.check(bad)
    with pytest.raises(EndpointRefused, match="does not resolve"):
        guard.check("https://nowhere.example.org/")
    system = EndpointGuard()  # the system resolver: numeric forms of 127.0.0.1 need no DNS server
    for sneaky in ("http://2130706433/", "http://0x7f.1/", "http://127.1:8080/", "http://[::1]/", "http://localhost/"):
        with pytest.raises(EndpointRefused, match="loopback address"):
            system.check(sneaky)
    lenient = EndpointGuard(allow_private=True, resolver=Resolver())
    lenient.check("http://127.0.0.1:9/x")  # allowed, and not even looked up
    with pytest.raises(EndpointRefused, match="must be an http"):
        lenient.check("file:///etc/passwd")


# -- at write time: 422 --------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "problem"), [
    ("http://127.0.0.1:8080/fhir/Patient", "loopback address"),
    ("http://localhost:2575/", "loopback address"),
    ("https://nowhere.example.test/", "does not resolve"),
    ("http://169.254.169.254/latest/meta-data/iam/", "link-local address"),
    ("http://metadata.example.test/computeMetadata/v1/", "link-local address"),
    ("https://intranet.example.test/admin", "private address"),
    ("https://v6.example.test/admin", "private address"),
    ("https://mixed.example.test/hook", "private address"),
    ("http://[::ffff:127.0.0.1]:8080/", "loopback address"),
    ("http://0.0.0.0:8080/", "unspecified address"),
    ("gopher://hooks.clinique.example.org/", "must be an http(s) URL"),
    ("file:///etc/passwd", "must be an http(s) URL"),
])
def test_create_with_a_forbidden_endpoint_is_a_422_naming_the_problem(strict: Env, endpoint: str,
                                                                       problem: str) -> None:
    resp = strict.client.post("/fhir/Subscription", json=subscription(endpoint, program_wide=True))
    assert resp.status_code == 422, resp.text
    text = strict.outcome(resp)
    assert "Subscription.channel.endpoint" in text
    assert problem in text
    assert endpoint not in text
    assert strict.client.get("/fhir/Subscription").json().get("total") == 0


def test_update_transaction_and_batch_are_checked_too(strict: Env) -> None:
    good = "https://hooks.clinique.example.org/notify"
    resp = strict.client.post("/fhir/Subscription", json=subscription(good, program_wide=True, status="off"))
    assert resp.status_code == 201, resp.text
    sub = resp.json()
    sid = sub["id"]
    moved = sub | {"channel": sub["channel"] | {"endpoint": "http://metadata.example.test/"}}
    resp = strict.client.put(f"/fhir/Subscription/{sid}", json=moved)
    assert resp.status_code == 422
    assert "link-local" in strict.outcome(resp)
    assert strict.client.get(f"/fhir/Subscription/{sid}").json()["channel"]["endpoint"] == good
    resp = strict.client.put("/fhir/Subscription", params={"url": good}, json=moved)  # conditional update
    assert resp.status_code == 422

    bad = subscription("http://127.0.0.1:9/", program_wide=True)
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b0e2d4c-6a51-4f0e-9a38-1d9f0c5a7e11", "resource": care_plan(1, "pat-1"),
         "request": {"method": "PUT", "url": "CarePlan/plan-1"}},
        {"resource": bad, "request": {"method": "POST", "url": "Subscription"}}]}
    resp = strict.client.post("/fhir", json=transaction)
    assert resp.status_code == 422
    assert strict.outcome(resp).startswith("entry 1: Subscription.channel.endpoint")
    assert strict.client.get("/fhir/CarePlan/plan-1").status_code == 404  # all or nothing
    batch = transaction | {"type": "batch"}
    statuses = [e["response"]["status"] for e in strict.client.post("/fhir", json=batch).json()["entry"]]
    assert statuses[0].startswith("201")
    assert statuses[1].startswith("422")
    assert strict.client.get("/fhir/Subscription").json()["total"] == 1


# -- at delivery time: DNS looked up again, the checked address used -------------------------------
def test_dns_rebinding_to_loopback_is_refused_at_delivery(tmp_path: Path) -> None:
    rebinding = Resolver(hooks_example_test=[[PUBLIC], ["127.0.0.1"]])  # public when checked, then loopback
    env = next(gen := _env(tmp_path, rebinding, allow_private=False))
    try:
        endpoint = f"http://hooks.example.test:{env.receiver.port}/hook"
        sid = env.client.post("/fhir/Subscription", json=subscription(
            endpoint, "CarePlan?status=active", content=None, program_wide=True)).json()["id"]  # plain R4: no handshake
        env.store.upsert_many([care_plan(1, "pat-1")])
        assert env.engine.flush()
        env.wait(lambda: env.client.get(f"/fhir/Subscription/{sid}").json()["status"] == "error")
        error = env.client.get(f"/fhir/Subscription/{sid}").json()["error"]
        assert error == "3 delivery attempts failed; last: endpoint refused: loopback address"
        assert env.receiver.hits == []  # the real server on 127.0.0.1 never heard of it
        assert env.receiver.refused == 0
        assert rebinding.calls.count("hooks.example.test") >= 4  # looked up at write time and per attempt
    finally:
        next(gen, None)


def test_delivery_goes_to_the_address_checked_with_the_endpoint_host(lenient: Env) -> None:
    port = lenient.receiver.port
    sid = lenient.client.post("/fhir/Subscription", json=subscription(
        f"http://subscriber.example.test:{port}/hook", program_wide=True)).json()["id"]
    hits = lenient.receiver.wait(lambda hs: len(hs) >= 1)  # the handshake, though no real DNS knows the name
    assert hits[0].headers["host"] == f"subscriber.example.test:{port}"
    assert hits[0].path == "/hook"
    lenient.wait(lambda: lenient.client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active")


def test_a_second_address_is_tried_when_the_first_refuses_connections(tmp_path: Path) -> None:
    two = Resolver(subscriber_example_test=["127.0.0.2", "127.0.0.1"])  # only 127.0.0.1 listens
    env = next(gen := _env(tmp_path, two, allow_private=True))
    try:
        sid = env.client.post("/fhir/Subscription", json=subscription(
            f"http://subscriber.example.test:{env.receiver.port}/hook", program_wide=True)).json()["id"]
        env.receiver.wait(lambda hs: len(hs) >= 1)
        env.wait(lambda: env.client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active")
    finally:
        next(gen, None)


# -- the headers: masked on the way out, real for the engine, kept on write-back --------------------
def _headers_everywhere(env: Env, sid: str) -> list[list[str]]:
    """channel.header of the Subscription as every FHIR API answer shows it."""
    c = env.client
    shown = [c.get(f"/fhir/Subscription/{sid}").json(), c.get(f"/fhir/Subscription/{sid}/_history/1").json()]
    for path in (f"/fhir/Subscription?_id={sid}", f"/fhir/Subscription/{sid}/_history", "/fhir/Subscription/_history"):
        shown += [e["resource"] for e in c.get(path).json()["entry"] if "resource" in e]
    shown += [e["resource"] for e in c.post("/fhir/Subscription/_search", data={"_id": sid}).json()["entry"]]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Subscription/{sid}"}},
        {"request": {"method": "GET", "url": "Subscription?status=active,requested,off"}}]}
    answer = c.post("/fhir", json=batch).json()["entry"]
    shown += [answer[0]["resource"], *[e["resource"] for e in answer[1]["resource"]["entry"]]]
    return [r["channel"]["header"] for r in shown if r.get("resourceType") == "Subscription"]


def test_headers_are_masked_on_every_read_and_real_on_the_wire(lenient: Env) -> None:
    created = lenient.client.post("/fhir/Subscription", json=subscription(
        lenient.receiver.url, program_wide=True, headers=(f"Authorization: {SECRET}", "X-Clinic: gmf-nord")))
    assert created.status_code == 201
    assert created.json()["channel"]["header"] == ["Authorization: ***", "X-Clinic: ***"]
    sid = created.json()["id"]
    hits = lenient.receiver.wait(lambda hs: len(hs) >= 1)
    assert hits[0].headers["authorization"] == SECRET  # the engine sends the real value
    lenient.wait(lambda: lenient.client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active")
    shown = _headers_everywhere(lenient, sid)
    assert len(shown) >= 10
    assert all(h == ["Authorization: ***", "X-Clinic: ***"] for h in shown)
    assert "s3cr3t" not in lenient.client.get(f"/fhir/Subscription/{sid}/_history").text
    stored = lenient.store.read("Subscription", sid).resource or {}
    assert stored["channel"]["header"] == [f"Authorization: {SECRET}", "X-Clinic: gmf-nord"]


def test_a_subscription_read_and_written_back_keeps_its_secret(lenient: Env) -> None:
    sid = lenient.client.post("/fhir/Subscription", json=subscription(
        lenient.receiver.url, program_wide=True, headers=(f"Authorization: {SECRET}",))).json()["id"]
    lenient.wait(lambda: lenient.client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active")
    sub = lenient.client.get(f"/fhir/Subscription/{sid}").json()
    resp = lenient.client.put(f"/fhir/Subscription/{sid}", json=sub | {"status": "off"})
    assert resp.status_code == 200
    assert resp.json()["channel"]["header"] == ["Authorization: ***"]
    back_on = lenient.client.get(f"/fhir/Subscription/{sid}").json() | {"status": "requested"}
    assert lenient.client.put(f"/fhir/Subscription/{sid}", json=back_on).status_code == 200
    lenient.receiver.wait(lambda hs: len(hs) >= 2)  # a new handshake
    lenient.store.upsert_many([care_plan(1, "pat-1")])
    hits = lenient.receiver.wait(lambda hs: len(hs) >= 3)
    assert all(h.headers["authorization"] == SECRET for h in hits)
    # a new value replaces the secret; asterisks for a header never stored are refused
    changed = lenient.client.get(f"/fhir/Subscription/{sid}").json()
    changed["channel"]["header"] = ["Authorization: Bearer n3w", "X-Other: ***"]
    resp = lenient.client.put(f"/fhir/Subscription/{sid}", json=changed)
    assert resp.status_code == 422
    assert "header[1]" in lenient.outcome(resp)
    changed["channel"]["header"] = ["Authorization: Bearer n3w"]
    assert lenient.client.put(f"/fhir/Subscription/{sid}", json=changed).status_code == 200
    stored = lenient.store.read("Subscription", sid).resource or {}
    assert stored["channel"]["header"] == ["Authorization: Bearer n3w"]
    resp = lenient.client.post("/fhir/Subscription", json=subscription(lenient.receiver.url,
                                                                        headers=("Authorization: ***",)))
    assert resp.status_code == 422


def test_masking_functions_leave_other_resources_alone() -> None:
    comm = communication(1, "pat-1")
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": comm}, {"search": {}}]}
    assert mask_secrets(bundle) is bundle
    assert mask_secrets(None) is None
    sub = subscription("https://h.example.org/", headers=("Authorization: Bearer a", "Authorization: Bearer b"))
    masked = mask_secrets(sub)
    assert masked is not None
    assert masked["channel"]["header"] == ["Authorization: ***", "Authorization: ***"]
    assert sub["channel"]["header"] == ["Authorization: Bearer a", "Authorization: Bearer b"]  # not modified
    assert keep_secrets(masked, sub)["channel"]["header"] == sub["channel"]["header"]  # in order

"""Pieces of the subscriptions: the store listener hook, the matcher, topics as data, Subscription
parsing, the retry policy and the care-team / consent rule."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from gateway.errors import ConfigError, StoreError
from gateway.fhirstore import FhirStore, Outcome
from gateway.fhirstore.match import Matcher
from gateway.http import make_fhir_router
from gateway.subscriptions import RetryPolicy
from gateway.subscriptions.authz import CareTeamAuthorizer, clients_of
from gateway.subscriptions.model import SubscriptionInvalid, parse_subscription
from gateway.subscriptions.topics import TOPICS_DIR, load_topics, topic_from_resource
from tests.test_fhirstore_data import encounter, patient
from tests.test_subscriptions import CANARY, CARE_PLAN, ER, SECRET, care_plan, care_team, subscription

JSON = dict[str, Any]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FhirStore]:
    s = FhirStore(tmp_path / "fhir.sqlite")
    yield s
    s.close()


# -- the store listener hook ---------------------------------------------------------------------
def test_listener_gets_each_committed_write_once_from_every_write_path(store: FhirStore) -> None:
    calls: list[list[tuple[str, str, str, int]]] = []
    seen_after_commit: list[bool] = []

    def listener(changes: list[Outcome]) -> None:
        calls.append([(c.rtype, c.id, c.status, c.version) for c in changes])
        result: list[bool] = []  # read from another thread: the data must already be committed
        reader = threading.Thread(target=lambda: result.append(bool(store.search(changes[0].rtype, [])[1].entries)
                                                               or changes[0].status == "deleted"))
        reader.start()
        reader.join()
        seen_after_commit.append(result[0])

    def broken(_changes: list[Outcome]) -> None:
        raise RuntimeError(CANARY)

    store.add_listener(broken)
    store.add_listener(listener)
    store.upsert_many([patient(1), encounter(1, "pat-1")])  # the store sink's path
    store.upsert_many([patient(1)])  # unchanged: no call
    client = TestClient(_app(store))
    assert client.put("/fhir/Patient/pat-1", json=patient(1, family="Tremblay")).status_code == 200
    assert client.delete("/fhir/Encounter/enc-1").status_code == 200
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(2), "request": {"method": "PUT", "url": "Patient/pat-2"}},
        {"resource": patient(3) | {"gender": "x"}, "request": {"method": "PUT", "url": "Patient/pat-3"}}]}
    assert client.post("/fhir", json=batch).status_code == 200
    bad_tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(4), "request": {"method": "PUT", "url": "Patient/pat-4"}},
        {"request": {"method": "DELETE", "url": "Patient/nobody"}}]}
    assert client.post("/fhir", json=bad_tx).status_code == 404  # rolled back: no call
    store.remove_listener(listener)
    store.upsert_many([patient(5)])
    assert calls == [
        [("Patient", "pat-1", "created", 1), ("Encounter", "enc-1", "created", 1)],
        [("Patient", "pat-1", "updated", 2)],
        [("Encounter", "enc-1", "deleted", 2)],
        [("Patient", "pat-2", "created", 1)],
    ]
    assert all(seen_after_commit)


def _app(store: FhirStore) -> FastAPI:
    app = FastAPI()
    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    return app


def test_failing_listener_is_logged_without_content(store: FhirStore, caplog: pytest.LogCaptureFixture) -> None:
    def broken(_changes: list[Outcome]) -> None:
        raise ValueError(CANARY)

    store.add_listener(broken)
    assert store.upsert_many([patient(1)])[0][1]
    assert "ValueError" in caplog.text
    assert CANARY not in caplog.text


# -- the matcher ---------------------------------------------------------------------------------
def test_matcher_uses_the_store_search_on_the_version_given() -> None:
    matcher = Matcher()
    enc = encounter(1, "pat-1", status="in-progress")
    assert matcher.matches(enc, [("class", "EMER"), ("status", "arrived,in-progress")])
    assert matcher.matches(enc, [("patient", "Patient/pat-1")])
    assert not matcher.matches(enc, [("patient", "Patient/pat-2")])
    assert not matcher.matches(enc, [("status:not", "arrived,triaged,in-progress")])
    assert matcher.matches(encounter(1, "pat-1", status="planned"), [("status:not", "arrived,in-progress")])
    with matcher.holding(enc) as match:
        assert match([("class", "EMER")])
        assert not match([("class", "IMP")])
    with pytest.raises(StoreError):
        Matcher.check("Encounter", [("colour", "blue")])
    with pytest.raises(StoreError):
        Matcher.check("Encounter", [("patient:not", "x")])
    with pytest.raises(StoreError):
        Matcher.check("Encounter", [("_count", "1")])
    matcher.close()


# -- topics as data ------------------------------------------------------------------------------
def test_published_topics_and_extensions_are_valid_fhir_and_load() -> None:
    for path in sorted(TOPICS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        get_fhir_model_class(data["resourceType"]).model_validate(data)
        assert data["url"].startswith("https://pivot.example.org/fhir/")
    topics = load_topics()
    assert {t.rsplit("/", 1)[-1] for t in topics} == {"care-plan-changed", "flag-changed", "er-arrival"}
    assert topics[ER].resource == "Encounter"
    assert "patient" in topics[CARE_PLAN].can_filter_by


@pytest.mark.parametrize(("interaction", "was_not_arriving", "arriving", "fires"), [
    ("create", None, True, True),  # registered at the ER
    ("create", None, False, False),  # e.g. created cancelled or as an inpatient
    ("update", True, True, True),  # planned / cancelled → in-progress
    ("update", False, True, False),  # in-progress → in-progress (an A08): not a new arrival
    ("update", True, False, False),
    ("delete", False, None, False),
])
def test_er_arrival_trigger_table(interaction: str, was_not_arriving: bool | None, arriving: bool | None,
                                  fires: bool) -> None:
    assert load_topics()[ER].fires(interaction, was_not_arriving, arriving) is fires


def test_care_plan_changed_fires_on_entering_leaving_and_delete() -> None:
    topic = load_topics()[CARE_PLAN]
    assert topic.fires("create", None, True)
    assert not topic.fires("create", None, False)
    assert topic.fires("update", True, False)  # taken out of the program
    assert topic.fires("update", False, True)
    assert not topic.fires("update", False, False)
    assert topic.fires("delete", True, None)
    assert not topic.fires("delete", False, None)


def test_bad_topic_data_is_refused_at_start_up(tmp_path: Path) -> None:
    good = json.loads((TOPICS_DIR / "SubscriptionTopic-flag-changed.json").read_text())
    for broken in ({**good, "resourceTrigger": []},
                   {**good, "canFilterBy": [{"filterParameter": "colour"}]},
                   {**good, "resourceTrigger": [{**good["resourceTrigger"][0],
                                                 "queryCriteria": {"current": "colour=blue"}}]}):
        with pytest.raises(ConfigError):
            topic_from_resource(broken)
    with pytest.raises(ConfigError):
        load_topics(tmp_path)


# -- Subscription parsing ------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"status": "paused"}, "Subscription.status"),
    ({"criteria": "https://elsewhere.example.org/SubscriptionTopic/x"}, "unknown topic"),
    ({"criteria": "Colour?x=1"}, "Subscription.criteria"),
    ({"criteria": "Subscription?status=active"}, "not allowed"),
    ({"criteria": "CarePlan?colour=blue"}, "colour"),
    ({"channel": {"type": "email", "endpoint": "mailto:x@example.org"}}, "rest-hook"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://example.org/x"}}, "endpoint"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://e.example.org", "payload": "application/fhir+xml"}},
     "payload"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://e.example.org", "header": [f"Authorization {SECRET}"]}},
     "header[0]"),
    ({"extension": [{"url": "https://pivot.example.org/fhir/StructureDefinition/subscription-owner",
                     "valueReference": {"reference": "Practitioner/dr-cote"}}]}, "Organization"),
])
def test_unservable_subscriptions_are_refused_without_values(change: JSON, message: str) -> None:
    topics = load_topics()
    with pytest.raises(SubscriptionInvalid) as err:
        parse_subscription(subscription("https://e.example.org/hook") | change | {"id": "s1"}, topics)
    assert message in err.value.message
    assert SECRET not in err.value.message
    assert "e.example.org" not in err.value.message


def test_subscription_spec_defaults_and_secrets_out_of_repr() -> None:
    topics = load_topics()
    spec = parse_subscription(subscription("https://e.example.org/hook", headers=(f"Authorization: {SECRET}",),
                                           owner="clsc-nord") | {"id": "s1"}, topics)
    assert spec.backport
    assert spec.owner == "clsc-nord"
    assert spec.channel.content == "id-only"
    assert spec.channel.headers == (("Authorization", SECRET),)
    assert SECRET not in repr(spec)
    assert "e.example.org" not in repr(spec)
    plain = parse_subscription(subscription("https://e.example.org/hook", "Communication?category=alert",
                                            content=None) | {"id": "s2"}, topics)
    assert not plain.backport
    assert plain.channel.content == "empty"


def test_retry_policy_backs_off_exponentially_then_slowly() -> None:
    policy = RetryPolicy(initial_s=1, factor=2, max_s=5, error_after=5, slow_s=60)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 5, 60, 60]


# -- the care-team and consent rule --------------------------------------------------------------
def test_care_team_rule_and_consent_denial(store: FhirStore) -> None:
    topics = load_topics()

    def spec(owner: str | None, program_wide: bool = False) -> Any:
        sub = subscription("https://e.example.org/hook", owner=owner, program_wide=program_wide)
        return parse_subscription(sub | {"id": "s"}, topics)

    deny = {"resourceType": "Consent", "id": "consent-1", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]}, "category": [{"coding": [{"code": "59284-0"}]}],
            "patient": {"reference": "Patient/pat-3"},
            "provision": {"type": "permit", "provision": [
                {"type": "deny", "actor": [{"role": {"coding": [{"code": "IRCP"}]},
                                            "reference": {"reference": "Organization/clsc-nord"}}]}]}}
    store.upsert_many([care_team("pat-1", "clsc-nord"), care_team("pat-2", "clsc-nord", on_behalf=True),
                       care_team("pat-3", "clsc-nord"), care_team("pat-4", "hopital"), deny,
                       care_team("pat-5", "clsc-nord") | {"status": "inactive"},
                       {"resourceType": "CareTeam", "id": "team-pat-6", "status": "active",
                        "subject": {"reference": "Patient/pat-6"},
                        "participant": [{"member": {"reference": "PractitionerRole/dr-cote-gmf"}}]},
                       {"resourceType": "PractitionerRole", "id": "dr-cote-gmf",
                        "practitioner": {"reference": "Practitioner/dr-cote"},
                        "organization": {"reference": "Organization/clsc-nord"}}])
    rule = CareTeamAuthorizer(store)
    clients = ("pat-1", "pat-2", "pat-3", "pat-4", "pat-5", "pat-6")
    allowed = {p: rule.allowed(spec("clsc-nord"), care_plan(1, p)) for p in clients}
    assert allowed == {"pat-1": True, "pat-2": True, "pat-3": False, "pat-4": False, "pat-5": False, "pat-6": True}
    assert not rule.allowed(spec(None), care_plan(1, "pat-1"))
    assert rule.allowed(spec(None, program_wide=True), care_plan(1, "pat-4"))
    assert not rule.allowed(spec("clsc-nord", program_wide=True), care_plan(1, "pat-3"))  # consent still wins
    assert rule.allowed(spec("gmf"), {"resourceType": "Organization", "id": "o"})  # not about a client
    assert not rule.allowed(spec("clsc-nord"), {"resourceType": "CarePlan", "id": "p", "status": "active"})
    assert clients_of(patient(7)) == {"pat-7"}
    assert clients_of(encounter(1, "pat-9")) == {"pat-9"}

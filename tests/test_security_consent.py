"""Organisation-scoped API clients: reads limited by the care-team and consent rule.

A real app (FHIR router + the guard, static tokens and our SMART token endpoint) over a store with
two clients: patient 1 in an active CareTeam with clinics A and B, patient 1's Consent denying B,
patient 2 in nobody's team of ours. Clinic A reads patient 1 and their Encounters, never patient
2 (404, as for an unknown id); B reads nothing of patient 1 once the Consent denies it; a
program-wide client and a client without organisation (hospital IT) read everything.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.errors import ConfigError
from gateway.fhirstore import FhirStore
from gateway.http import install_fhir_error_handler, make_fhir_router, visibility
from gateway.security import Security, install_security
from gateway.security.audit_trail import query_audit
from gateway.security.clients import ClientRegistry
from gateway.settings import Settings
from gateway.subscriptions import SubscriptionConfig, SubscriptionEngine, make_subscription_router
from tests.security_helpers import assertion, public_jwk, rsa_key, tokens_file, write_json

JSON = dict[str, Any]
CLINIC_A, CLINIC_B, PROGRAM, HOSPITAL_IT = "token-clinic-a-0123", "token-clinic-b-0123", "token-program-0123", \
    "token-hospital-it-0123"
READ = ["system/*.rs"]


def _patient(pid: str) -> JSON:
    return {"resourceType": "Patient", "id": pid, "gender": "female"}


def _encounter(eid: str, pid: str, practitioner: str | None = None) -> JSON:
    enc: JSON = {"resourceType": "Encounter", "id": eid, "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": f"Patient/{pid}"}}
    if practitioner:
        enc["participant"] = [{"individual": {"reference": f"Practitioner/{practitioner}"}}]
    return enc


def _care_team(pid: str, *orgs: str) -> JSON:
    return {"resourceType": "CareTeam", "id": f"team-{pid}", "status": "active",
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"member": {"reference": f"Organization/{o}"}} for o in orgs]}


CONSENT_DENYING_B = {
    "resourceType": "Consent", "id": "consent-p1", "status": "active",
    "scope": {"coding": [{"code": "patient-privacy"}]}, "category": [{"coding": [{"code": "59284-0"}]}],
    "patient": {"reference": "Patient/p1"},
    "provision": {"type": "permit", "provision": [
        {"type": "deny", "actor": [{"role": {"coding": [{"code": "IRCP"}]},
                                    "reference": {"reference": "Organization/clinic-b"}}]}]}}


@pytest.fixture
def client_key() -> Any:
    return rsa_key()


@pytest.fixture
def env(tmp_path: Path, client_key: Any) -> Iterator[tuple[TestClient, FhirStore, Settings]]:
    tokens = tokens_file(tmp_path / "tokens.json", {
        CLINIC_A: {"client_id": "ehr-clinic-a", "scopes": READ, "organization": "clinic-a"},
        CLINIC_B: {"client_id": "ehr-clinic-b", "scopes": READ, "organization": "clinic-b"},
        PROGRAM: {"client_id": "case-program", "scopes": READ, "organization": "program", "program_wide": True},
        HOSPITAL_IT: {"client_id": "hospital-it", "scopes": ["system/*.cruds"]},
    })
    clients = write_json(tmp_path / "clients.json", {"clients": [
        {"client_id": "smart-clinic-a", "scopes": READ, "organization": "clinic-a",
         "jwks": {"keys": [public_jwk(client_key, "k1", "RS384")]}}]})
    settings = Settings(data_dir=tmp_path / "var", auth="tokens,smart", auth_tokens_file=tokens,
                        auth_clients_file=clients, auth_token_url="http://testserver/auth/token")
    settings.data_dir.mkdir(parents=True)
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    store.upsert_many([_patient("p1"), _patient("p2"), _care_team("p1", "clinic-a", "clinic-b"),
                       _care_team("p2", "clinic-z"),
                       {"resourceType": "Organization", "id": "clinic-a", "name": "GMF A"},
                       {"resourceType": "Practitioner", "id": "dr-p2"}])
    # interleaved, so that a page of the unfiltered search mixes visible and withheld rows
    for n in range(4):
        store.upsert_many([_encounter(f"e1-{n}", "p1")])
        store.upsert_many([_encounter(f"e2-{n}", "p2", practitioner="dr-p2")])
    with _served(settings, store) as tc:
        yield tc, store, settings
    store.close()


@contextlib.contextmanager
def _served(settings: Settings, store: FhirStore) -> Iterator[TestClient]:
    """The FHIR routes and the subscription operations behind the security middleware."""
    security = Security(settings)
    engine = SubscriptionEngine(store, SubscriptionConfig(
        base_url="http://testserver/fhir", state_path=settings.data_dir / "subscriptions.sqlite",
        allow_private=True))
    engine.start()
    app = FastAPI()
    app.include_router(make_subscription_router(lambda: engine), prefix="/fhir")
    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    install_fhir_error_handler(app)
    install_security(app, security)
    try:
        with TestClient(app, raise_server_exceptions=False) as tc:
            yield tc
    finally:
        engine.stop()
        security.close()


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ids(bundle: JSON, mode: str = "match") -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == mode and "resource" in e]


def _walk(tc: TestClient, url: str, token: str) -> tuple[list[str], list[str]]:
    """Every match along the next links, and every page token met."""
    seen: list[str] = []
    tokens: list[str] = []
    while url:
        bundle = tc.get(url, headers=_as(token)).json()
        assert "total" not in bundle
        seen += _ids(bundle)
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        tokens += [parse_qs(urlsplit(u).query).get("_page", [""])[0] for u in links.values()]
        url = links.get("next", "")
    return seen, [t for t in tokens if t]


def _token_key(token: str) -> list[Any]:
    data: list[Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return data


# -- clinic A: in patient 1's care team ------------------------------------------------------------
def test_a_reads_its_client_and_not_the_other(env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, _, _ = env
    assert tc.get("/fhir/Patient/p1", headers=_as(CLINIC_A)).json()["id"] == "p1"
    assert tc.get("/fhir/Encounter/e1-0", headers=_as(CLINIC_A)).status_code == 200
    assert tc.get("/fhir/Patient/p1/_history/1", headers=_as(CLINIC_A)).status_code == 200
    unknown = tc.get("/fhir/Patient/nobody", headers=_as(CLINIC_A))
    for path in ("/fhir/Patient/p2", "/fhir/Encounter/e2-0", "/fhir/Patient/p2/_history",
                 "/fhir/CareTeam/team-p2"):
        r = tc.get(path, headers=_as(CLINIC_A))
        assert r.status_code == 404, path
        assert r.json() == unknown.json()  # the very answer of an unknown id: existence not revealed
    r = tc.get("/fhir/Patient/p2/_history/1", headers=_as(CLINIC_A))
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"
    # types never about a client are not filtered
    assert tc.get("/fhir/Organization/clinic-a", headers=_as(CLINIC_A)).status_code == 200


def test_a_searches_list_only_its_clients(env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, _, _ = env
    patients = tc.get("/fhir/Patient", headers=_as(CLINIC_A)).json()
    assert _ids(patients) == ["Patient/p1"]
    assert "total" not in patients  # a total over the unfiltered matches would count the withheld
    r = tc.get("/fhir/Encounter", params={"patient": "Patient/p1"}, headers=_as(CLINIC_A)).json()
    assert sorted(_ids(r)) == [f"Encounter/e1-{n}" for n in range(4)]
    r = tc.get("/fhir/Encounter", params={"patient": "Patient/p2", "_count": "1"}, headers=_as(CLINIC_A)).json()
    assert "entry" not in r
    assert [link["relation"] for link in r["link"]] == ["self"]  # no next link: nothing hints at p2's visits
    r = tc.post("/fhir/Encounter/_search", data={"subject": "Patient/p2"}, headers=_as(CLINIC_A))
    assert r.status_code == 200
    assert "entry" not in r.json()
    summary = tc.get("/fhir/Encounter", params={"_summary": "count"}, headers=_as(CLINIC_A)).json()
    assert "total" not in summary
    assert "entry" not in summary
    orgs = tc.get("/fhir/Organization", headers=_as(CLINIC_A)).json()
    assert orgs["total"] == 1  # not about a client: unchanged


@pytest.mark.parametrize("batch", [100, 1])  # 1: the store is read two rows at a time, refills span batches
def test_a_pages_are_refilled_and_never_carry_a_withheld_key(env: tuple[TestClient, FhirStore, Settings],
                                                             batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    tc, _, _ = env
    monkeypatch.setattr(visibility, "_BATCH", batch)
    seen, tokens = _walk(tc, "/fhir/Encounter?_count=1", CLINIC_A)
    assert seen == [f"Encounter/e1-{n}" for n in range(4)]  # each once, in order, none of p2's
    assert tokens
    assert all(str(_token_key(t)[2]).startswith("e1-") for t in tokens)
    seen, _ = _walk(tc, "/fhir/Encounter?_count=3&_sort=-_lastUpdated", CLINIC_A)
    assert seen == [f"Encounter/e1-{n}" for n in (3, 2, 1, 0)]
    # the previous link of the second page leads back to the first page
    first = tc.get("/fhir/Encounter?_count=2", headers=_as(CLINIC_A)).json()
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = tc.get(nxt, headers=_as(CLINIC_A)).json()
    assert _ids(second) == ["Encounter/e1-2", "Encounter/e1-3"]
    prev = next(link["url"] for link in second["link"] if link["relation"] == "previous")
    assert _ids(tc.get(prev, headers=_as(CLINIC_A)).json()) == ["Encounter/e1-0", "Encounter/e1-1"]
    # the history of the type: only patient 1's versions, and again no total
    history = tc.get("/fhir/Encounter/_history", params={"_count": "2"}, headers=_as(CLINIC_A)).json()
    assert "total" not in history
    assert [e["fullUrl"].rsplit("/", 1)[1] for e in history["entry"]] == ["e1-3", "e1-2"]


def test_a_includes_only_what_its_entries_reference_and_it_may_see(
        env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, _, _ = env
    r = tc.get("/fhir/Encounter", params={"_include": "Encounter:patient"}, headers=_as(CLINIC_A)).json()
    assert _ids(r, "include") == ["Patient/p1"]
    # dr-p2 is referenced only by patient 2's encounters: including it would reveal them
    r = tc.get("/fhir/Encounter", params={"_include": "Encounter:practitioner"}, headers=_as(CLINIC_A)).json()
    assert _ids(r, "include") == []
    it = tc.get("/fhir/Encounter", params={"_include": "Encounter:practitioner"}, headers=_as(HOSPITAL_IT)).json()
    assert _ids(it, "include") == ["Practitioner/dr-p2"]


def test_a_deleted_resource_is_a_404_unless_visible(env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, store, _ = env
    store.delete("Encounter", "e2-0")
    store.delete("Encounter", "e1-0")
    assert tc.get("/fhir/Encounter/e2-0", headers=_as(CLINIC_A)).status_code == 404
    assert tc.get("/fhir/Encounter/e2-0", headers=_as(HOSPITAL_IT)).status_code == 410
    assert tc.get("/fhir/Encounter/e1-0", headers=_as(CLINIC_A)).status_code == 410


def test_a_cannot_read_through_a_batch(env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, _, _ = env
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient/p2"}}]}
    r = tc.post("/fhir", json=batch, headers=_as(CLINIC_A))
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"
    r = tc.post("/fhir", json=batch, headers=_as(HOSPITAL_IT))
    assert r.json()["entry"][0]["response"]["status"].startswith("200")


def test_refused_reads_are_audited_with_their_outcome(env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, _, settings = env
    assert tc.get("/fhir/Patient/p2", headers=_as(CLINIC_A)).status_code == 404
    assert tc.get("/fhir/Patient/nobody", headers=_as(CLINIC_A)).status_code == 404
    refused, unknown = query_audit(settings.data_dir / "audit.sqlite")
    assert refused["outcome"] == "4"
    assert "withheld" in refused["outcomeDesc"]
    assert refused["agent"][0]["who"]["identifier"]["value"] == "ehr-clinic-a"
    assert [e["what"]["reference"] for e in refused["entity"] if e["role"]["code"] == "1"] == ["Patient/p2"]
    assert unknown["outcomeDesc"] == "HTTP 404"  # a genuinely unknown id is not called withheld


# -- clinic B: in the care team, but denied by the client's Consent --------------------------------
def test_b_sees_nothing_of_patient_1_once_the_consent_denies_it(
        env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, store, _ = env
    assert tc.get("/fhir/Patient/p1", headers=_as(CLINIC_B)).status_code == 200  # care team member
    store.upsert_many([CONSENT_DENYING_B])
    assert tc.get("/fhir/Patient/p1", headers=_as(CLINIC_B)).status_code == 404
    assert tc.get("/fhir/Encounter/e1-0", headers=_as(CLINIC_B)).status_code == 404
    assert tc.get("/fhir/Patient/p2", headers=_as(CLINIC_B)).status_code == 404  # not in p2's team
    for path in ("/fhir/Patient", "/fhir/Encounter", "/fhir/Encounter?patient=Patient/p1", "/fhir/Consent",
                 "/fhir/CareTeam", "/fhir/Encounter/_history"):
        assert "entry" not in tc.get(path, headers=_as(CLINIC_B)).json(), path
    # the Consent denies B only: A still reads patient 1
    assert tc.get("/fhir/Patient/p1", headers=_as(CLINIC_A)).status_code == 200


# -- program-wide, no organisation, our SMART tokens, the registration ------------------------------
def test_program_wide_and_unscoped_clients_see_everything(env: tuple[TestClient, FhirStore, Settings]) -> None:
    tc, store, _ = env
    store.upsert_many([CONSENT_DENYING_B])
    everyone = ["Patient/p1", "Patient/p2"]
    for token in (PROGRAM, HOSPITAL_IT):
        assert tc.get("/fhir/Patient/p2", headers=_as(token)).status_code == 200
        assert sorted(_ids(tc.get("/fhir/Patient", headers=_as(token)).json())) == everyone
        assert len(_ids(tc.get("/fhir/Encounter", headers=_as(token)).json())) == 8
    unchanged = tc.get("/fhir/Encounter", headers=_as(HOSPITAL_IT)).json()
    assert unchanged["total"] == 8  # a client without organisation: as before, total included


def test_a_smart_token_of_an_organisation_scoped_client_is_limited(
        env: tuple[TestClient, FhirStore, Settings], client_key: Any) -> None:
    tc, _, _ = env
    form = {"grant_type": "client_credentials", "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(client_key, "smart-clinic-a", "http://testserver/auth/token")}
    token = tc.post("/auth/token", data=form).json()["access_token"]
    assert tc.get("/fhir/Patient/p1", headers=_as(token)).status_code == 200
    assert tc.get("/fhir/Patient/p2", headers=_as(token)).status_code == 404
    assert _ids(tc.get("/fhir/Patient", headers=_as(token)).json()) == ["Patient/p1"]


def test_anonymous_loopback_mode_is_unchanged(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    settings.data_dir.mkdir(parents=True)
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    store.upsert_many([_patient("p2")])
    with _served(settings, store) as tc:
        assert tc.get("/fhir/Patient/p2").status_code == 200
        assert tc.get("/fhir/Patient").json()["total"] == 1
    store.close()


@pytest.mark.parametrize(("entry", "why"), [
    ({"organization": "Organization/clinic-a"}, "must be an Organization id"),
    ({"organization": 12}, "must be an Organization id"),
    ({"organization": "clinic-a", "program_wide": "yes"}, "must be true or false"),
    ({"program_wide": True}, "needs an organization"),
])
def test_registration_is_checked(tmp_path: Path, entry: JSON, why: str) -> None:
    path = write_json(tmp_path / "clients.json", {"clients": [{"client_id": "c", "scopes": READ, **entry}]})
    with pytest.raises(ConfigError, match=why):
        ClientRegistry.load(path, None)
    ok = write_json(tmp_path / "ok.json", {"clients": [{"client_id": "c", "organization": "clinic-a"}]})
    client = ClientRegistry.load(ok, None).get("c")
    assert client is not None
    assert (client.organization, client.program_wide) == ("clinic-a", False)


def test_subscription_status_and_events_only_for_the_owner(env: tuple[TestClient, FhirStore, Settings]) -> None:
    """$status / $events name the owner's patients: another organisation gets the 404 of a hidden read."""
    from tests.test_subscriptions import subscription

    tc, store, _settings = env
    store.update(subscription("http://127.0.0.1:9/hook", owner="clinic-a", status="off") | {"id": "sub-a"})
    for path in ("$status", "$events"):
        assert tc.get(f"/fhir/Subscription/sub-a/{path}", headers=_as(CLINIC_A)).status_code == 200
        refused = tc.get(f"/fhir/Subscription/sub-a/{path}", headers=_as(CLINIC_B))
        assert refused.status_code == 404
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert tc.get(f"/fhir/Subscription/sub-a/{path}", headers=_as(PROGRAM)).status_code == 200
        assert tc.get(f"/fhir/Subscription/sub-a/{path}", headers=_as(HOSPITAL_IT)).status_code == 200

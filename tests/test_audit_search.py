"""``GET /fhir/AuditEvent``: the privacy officer's question ("who saw this client's record this
month") asked the FHIR way, through the real app behind the security guard: search by patient,
agent, date, type/subtype, outcome, with paging; a scope of its own that ``*`` does not grant; an
organisation's client sees only its own accesses; reading the trail is itself audited; the
CapabilityStatement lists it; a mistyped filter is a 400, never the whole trail."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import Gateway, create_app
from gateway.settings import load_settings
from tests.security_helpers import tokens_file

OFFICER, EHR, CLINIC = "officer-token-1234", "ehr-token-5678", "clinic-token-9012"
PATIENT = {"resourceType": "Patient", "id": "p7", "name": [{"family": "Zéphir", "given": ["Anne"]}]}
OTHER = {"resourceType": "Patient", "id": "p8", "name": [{"family": "Autre", "given": ["Luc"]}]}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("audit-search")
    tokens = tokens_file(root / "tokens.json", {
        OFFICER: {"client_id": "privacy-officer", "scopes": ["system/AuditEvent.rs"]},
        EHR: {"client_id": "clsc-ehr", "scopes": ["system/*.cruds"]},
        CLINIC: {"client_id": "gmf-12", "scopes": ["system/*.rs", "system/AuditEvent.rs"],
                 "organization": "clinic-gmf-12"},
    })
    gw = Gateway(load_settings(data_dir=root / "var", auth="tokens", auth_tokens_file=tokens, workers=False))
    gw.store.upsert_many([PATIENT, OTHER])
    client = TestClient(create_app(gw), raise_server_exceptions=False)
    ehr = {"Authorization": f"Bearer {EHR}"}
    assert client.get("/fhir/Patient/p7", headers=ehr).status_code == 200
    assert client.get("/fhir/Patient/p8", headers=ehr).status_code == 200
    assert client.get("/fhir/Patient", params={"_id": "p7"}, headers=ehr).status_code == 200
    assert client.get("/fhir/Patient/nobody", headers=ehr).status_code == 404
    client.get("/fhir/Patient/p7", headers={"Authorization": f"Bearer {CLINIC}"})  # not in its care: still audited
    yield client
    client.close()
    gw.close()


def _get(http: TestClient, token: str, **params: str) -> Any:
    resp = http.get("/fhir/AuditEvent", params=params, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "searchset"
    return body


def _events(bundle: Any) -> list[Any]:
    return [e["resource"] for e in bundle.get("entry", [])]


def _client(event: Any) -> str:
    return str(event["agent"][0]["who"]["display"])


def test_who_saw_this_client(http: TestClient) -> None:
    bundle = _get(http, OFFICER, patient="Patient/p7")
    events = _events(bundle)
    assert bundle["total"] == len(events) >= 3
    assert {_client(e) for e in events} >= {"clsc-ehr", "gmf-12"}
    assert all(any(x.get("what", {}).get("reference") == "Patient/p7" for x in e["entity"]) for e in events)
    assert [e["recorded"] for e in events] == sorted((e["recorded"] for e in events), reverse=True)  # newest first
    # an id alone works too (the officer's own searches are audited meanwhile: left out by agent)
    others = {"agent": "clsc-ehr,gmf-12"}
    assert _get(http, OFFICER, patient="p7", **others)["total"] == _get(http, OFFICER, patient="Patient/p7",
                                                                        **others)["total"] >= 3


@pytest.mark.parametrize(("params", "check"), [
    ({"agent": "clsc-ehr"}, lambda e: _client(e) == "clsc-ehr"),
    ({"subtype": "read"}, lambda e: e["subtype"][0]["code"] == "read"),
    ({"subtype": "http://hl7.org/fhir/restful-interaction|search-type"}, lambda e: e["subtype"][0]["code"] ==
     "search-type"),
    ({"outcome": "4"}, lambda e: e["outcome"] == "4"),
    ({"type": "rest"}, lambda e: e["type"]["code"] == "rest"),
    ({"entity": "Patient/p8"}, lambda e: any(x.get("what", {}).get("reference") == "Patient/p8" for x in e["entity"])),
])
def test_each_filter_keeps_only_what_it_names(http: TestClient, params: dict[str, str], check: Any) -> None:
    events = _events(_get(http, OFFICER, _count="1000", **params))
    assert events
    assert all(check(e) for e in events)
    assert len(events) < len(_events(_get(http, OFFICER, _count="1000")))


def test_dates_bound_the_search(http: TestClient) -> None:
    today = datetime.now(UTC).date().isoformat()
    assert _get(http, OFFICER, patient="p7", date=f"ge{today}")["total"] >= 3
    assert _get(http, OFFICER, patient="p7", date="lt2000-01-01")["total"] == 0
    assert _get(http, OFFICER, patient="p7", date="2000")["total"] == 0


def test_pages_follow_the_next_link(http: TestClient) -> None:
    first = _get(http, OFFICER, _count="2")
    total = first["total"]
    assert total > 2
    seen = [e["id"] for e in _events(first)]
    bundle = first
    while nxt := next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None):
        resp = http.get(nxt.replace("http://testserver", ""), headers={"Authorization": f"Bearer {OFFICER}"})
        assert resp.status_code == 200
        bundle = resp.json()
        seen += [e["id"] for e in _events(bundle)]
    assert len(seen) == len(set(seen)) >= total  # no repeat; the officer's own searches add events meanwhile


def test_the_scope_is_granted_only_by_name(http: TestClient) -> None:
    resp = http.get("/fhir/AuditEvent", headers={"Authorization": f"Bearer {EHR}"})  # system/*.cruds
    assert resp.status_code == 403
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert http.get("/fhir/AuditEvent").status_code == 401


def test_an_organisation_s_client_sees_only_its_own_accesses(http: TestClient) -> None:
    events = _events(_get(http, CLINIC, _count="1000"))
    assert events
    assert {_client(e) for e in events} == {"gmf-12"}
    others = _events(_get(http, OFFICER, agent="clsc-ehr", _count="1"))
    resp = http.get(f"/fhir/AuditEvent/{others[0]['id']}", headers={"Authorization": f"Bearer {CLINIC}"})
    assert resp.status_code == 404
    mine = http.get(f"/fhir/AuditEvent/{events[0]['id']}", headers={"Authorization": f"Bearer {CLINIC}"})
    assert mine.status_code == 200
    assert mine.json()["id"] == events[0]["id"]


def test_reading_the_trail_is_itself_audited(http: TestClient) -> None:
    _get(http, OFFICER, patient="Patient/p8", subtype="read")
    mine = _events(_get(http, OFFICER, agent="privacy-officer", subtype="search-type", _count="1000"))
    queried = [e for e in mine if any(base64.b64decode(x.get("query", "")).decode().startswith("AuditEvent?")
                                      for x in e.get("entity", []))]
    assert queried
    latest = queried[0]
    assert "patient=Patient%2Fp8" in base64.b64decode(
        next(x["query"] for x in latest["entity"] if "query" in x)).decode()
    assert any(x.get("what", {}).get("reference") == "Patient/p8" for x in latest["entity"])


@pytest.mark.parametrize("params", [{"patinet": "p7"}, {"patient:missing": "true"}, {"date": "yesterday"},
                                    {"_count": "0"}, {"outcome": "9"}, {"_page": "x"}])
def test_a_mistyped_filter_is_a_400_not_the_whole_trail(http: TestClient, params: dict[str, str]) -> None:
    resp = http.get("/fhir/AuditEvent", params=params, headers={"Authorization": f"Bearer {OFFICER}"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert next(iter(params)).split(":")[0] in body["issue"][0]["diagnostics"]


def test_the_capability_statement_lists_it(http: TestClient) -> None:
    cap = http.get("/fhir/metadata").json()
    (entry,) = [r for r in cap["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert {i["code"] for i in entry["interaction"]} == {"read", "search-type"}
    assert {p["name"] for p in entry["searchParam"]} >= {"patient", "entity", "agent", "date", "type", "subtype",
                                                         "outcome"}

"""The FHIR REST API of the embedded store, through HTTP (FastAPI TestClient on the router alone)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient

from gateway.fhir.models import validate
from gateway.fhirstore import FhirStore
from gateway.fhirstore.params import SEARCH_PARAMS, include_params
from tests.test_fhirstore_data import MRN, NAM, condition, encounter, patient

FHIR = "application/fhir+json"
CANARY = "Canarifamille"


def _outcome(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(FHIR)
    body: dict[str, Any] = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["diagnostics"]
    return body


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def _search(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    resp = client.get(f"/fhir/{path}", params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert body["resourceType"] == "Bundle"
    return body


# -- read, vread, update, create, delete -----------------------------------------------------------
def test_put_creates_then_is_idempotent_then_versions(client: TestClient) -> None:
    first = client.put("/fhir/Patient/pat-1", json=patient(1))
    assert first.status_code == 201
    assert first.headers["etag"] == 'W/"1"'
    assert first.headers["location"] == "http://testserver/fhir/Patient/pat-1/_history/1"
    assert first.headers["content-type"] == f"{FHIR}; charset=utf-8"
    again = client.put("/fhir/Patient/pat-1", json=patient(1), headers={"Content-Type": FHIR})
    assert again.status_code == 200
    assert again.headers["etag"] == 'W/"1"'
    assert "location" not in again.headers
    changed = client.put("/fhir/Patient/pat-1", json=patient(1, family="Tremblay"))
    assert changed.status_code == 200
    assert changed.json()["meta"]["versionId"] == "2"
    read = client.get("/fhir/Patient/pat-1")
    assert read.status_code == 200
    assert read.headers["etag"] == 'W/"2"'
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", read.headers["last-modified"])
    assert read.json()["name"][0]["family"] == "Tremblay"
    v1 = client.get("/fhir/Patient/pat-1/_history/1")
    assert v1.status_code == 200
    assert v1.json()["name"][0]["family"] == "Gagnon-Lefebvre"
    assert v1.headers["etag"] == 'W/"1"'
    _outcome(client.get("/fhir/Patient/pat-1/_history/9"), 404)
    history = _search(client, "Patient/pat-1/_history")
    assert history["type"] == "history"
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["response"]["status"] for e in history["entry"]] == ["200 OK", "201 Created"]


def test_post_creates_with_a_server_id(client: TestClient) -> None:
    body = patient(1) | {"id": "ignored"}
    resp = client.post("/fhir/Patient", json=body)
    assert resp.status_code == 201
    new_id = resp.json()["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", new_id)
    assert resp.headers["location"] == f"http://testserver/fhir/Patient/{new_id}/_history/1"
    _outcome(client.get("/fhir/Patient/ignored"), 404)
    minimal = client.post("/fhir/Patient", json=patient(2), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal.headers["location"]


def test_conditional_create_with_if_none_exist(client: TestClient) -> None:
    header = {"If-None-Exist": f"identifier={NAM}|GAGM58000001"}
    created = client.post("/fhir/Patient", json=patient(1), headers=header)
    assert created.status_code == 201
    found = client.post("/fhir/Patient", json=patient(1, family="Autre"), headers=header)
    assert found.status_code == 200
    assert found.json()["id"] == created.json()["id"]
    assert found.json()["name"][0]["family"] == "Gagnon-Lefebvre"
    with_type = {"If-None-Exist": f"Patient?identifier={NAM}|GAGM58000001"}
    assert client.post("/fhir/Patient", json=patient(1), headers=with_type).status_code == 200
    client.post("/fhir/Patient", json=patient(1))
    _outcome(client.post("/fhir/Patient", json=patient(1), headers=header), 412)


def test_if_match(client: TestClient) -> None:
    client.put("/fhir/Patient/pat-1", json=patient(1))
    client.put("/fhir/Patient/pat-1", json=patient(1, family="Tremblay"))
    stale = client.put("/fhir/Patient/pat-1", json=patient(1, family="Roy"), headers={"If-Match": 'W/"1"'})
    _outcome(stale, 412)
    assert client.get("/fhir/Patient/pat-1").json()["name"][0]["family"] == "Tremblay"
    fresh = client.put("/fhir/Patient/pat-1", json=patient(1, family="Roy"), headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200
    assert fresh.headers["etag"] == 'W/"3"'
    _outcome(client.put("/fhir/Patient/pat-1", json=patient(1), headers={"If-Match": "soon"}), 400)
    _outcome(client.put("/fhir/Patient/pat-9", json=patient(9), headers={"If-Match": 'W/"1"'}), 412)


def test_conditional_update_with_zero_one_and_two_matches(client: TestClient) -> None:
    url = f"/fhir/Patient?identifier={MRN}|700001"
    body = {k: v for k, v in patient(1).items() if k != "id"}
    created = client.put(url, json=body)
    assert created.status_code == 201
    server_id = created.json()["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", server_id)
    updated = client.put(url, json=body | {"gender": "other"})
    assert updated.status_code == 200
    assert updated.json()["id"] == server_id
    assert updated.json()["meta"]["versionId"] == "2"
    _outcome(client.put(url, json=body | {"id": "someone-else"}), 400)
    client.put("/fhir/Patient/pat-dup", json=patient(1) | {"id": "pat-dup"})
    _outcome(client.put(url, json=body), 412)
    _outcome(client.put("/fhir/Patient?colour=blue", json=body), 400)
    _outcome(client.put("/fhir/Patient?_count=1", json=body), 400)
    _outcome(client.put("/fhir/Patient", json=body), 400)


def test_delete_then_gone(client: TestClient) -> None:
    client.put("/fhir/Patient/pat-1", json=patient(1))
    deleted = client.delete("/fhir/Patient/pat-1")
    assert deleted.status_code == 200
    assert deleted.headers["etag"] == 'W/"2"'
    _outcome(client.get("/fhir/Patient/pat-1"), 410)
    _outcome(client.get("/fhir/Patient/pat-1/_history/2"), 410)
    assert client.get("/fhir/Patient/pat-1/_history/1").status_code == 200
    assert client.delete("/fhir/Patient/pat-1").status_code == 200
    _outcome(client.delete("/fhir/Patient/nobody"), 404)
    history = _search(client, "Patient/pat-1/_history")
    assert history["entry"][0]["request"] == {"method": "DELETE", "url": "Patient/pat-1"}
    assert "resource" not in history["entry"][0]


def test_write_errors_are_operation_outcomes_without_content(client: TestClient) -> None:
    bad_date = patient(1, family=CANARY) | {"birthDate": "1958-13-45"}
    for resp, status in [
        (client.put("/fhir/Patient/pat-1", json=bad_date), 422),
        (client.put("/fhir/Patient/pat-1", json=patient(1, family=CANARY) | {"gender": "f"}), 422),
        (client.put("/fhir/Patient/pat-2", json=patient(1, family=CANARY)), 400),
        (client.put("/fhir/Patient/pat-1", json=encounter(1, "pat-1") | {"id": "pat-1"}), 400),
        (client.put("/fhir/Patient/pat-1", content=b'{"resourceType": "Patient", "family": "' + CANARY.encode()), 400),
        (client.put("/fhir/Patient/pat-1", content=b"[]"), 400),
        (client.put("/fhir/Patient/pat-1", content=b"PID|1||" + CANARY.encode(),
                    headers={"Content-Type": "x-application/hl7-v2+er7"}), 415),
        (client.put("/fhir/Patient/bad!id", json=patient(1)), 400),
        (client.post("/fhir/Patient", json={"resourceType": "Patient", "unknownElement": CANARY}), 422),
    ]:
        body = _outcome(resp, status)
        assert CANARY not in resp.text, body
    assert "birthDate" in client.put("/fhir/Patient/pat-1", json=bad_date).json()["issue"][0]["diagnostics"]


def test_unknown_types_paths_and_interactions(client: TestClient) -> None:
    _outcome(client.get("/fhir/Basic/1"), 405)
    _outcome(client.get("/fhir/Basic"), 405)
    _outcome(client.put("/fhir/Basic/1", json={"resourceType": "Basic", "id": "1"}), 405)
    _outcome(client.get("/fhir/NotAType/1/_history"), 405)
    _outcome(client.patch("/fhir/Patient/1", json=[]), 405)
    _outcome(client.delete("/fhir/Patient?identifier=x"), 405)
    _outcome(client.post("/fhir/Patient/pat-1", json=patient(1)), 405)
    _outcome(client.get("/fhir/Patient/pat-1/_history/1/more/parts"), 404)
    _outcome(client.get("/fhir/Patient/nobody"), 404)
    _outcome(client.get("/fhir"), 405)


def test_internal_errors_do_not_leak(client: TestClient, store: FhirStore, monkeypatch: Any,
                                     caplog: pytest.LogCaptureFixture) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError(f"secret {CANARY} in /var/lib/pivot/fhir.sqlite")

    monkeypatch.setattr(store, "read", boom)
    resp = client.get("/fhir/Patient/pat-1")
    body = _outcome(resp, 500)
    assert body["issue"][0]["diagnostics"] == "internal error"
    assert CANARY not in resp.text
    assert "sqlite" not in resp.text
    assert "RuntimeError" in caplog.text
    assert CANARY not in caplog.text


# -- search --------------------------------------------------------------------------------------
@pytest.fixture
def visits(store: FhirStore) -> FhirStore:
    store.upsert_many([
        patient(1), patient(2, family="Côté", given="Jean-François"),
        encounter(1, "pat-1", start="2026-03-01T08:15:00-05:00", end="2026-03-01T13:00:00-05:00"),
        encounter(2, "pat-1", start="2026-03-20T22:40:00-04:00", end="2026-03-21T02:00:00-04:00", cls="IMP"),
        encounter(3, "pat-2", start="2026-04-02", status="in-progress"),
        condition(1, "pat-1", "enc-1"), condition(2, "pat-2", "enc-3", code="F10.2"),
    ])
    return store


@pytest.mark.usefixtures("visits")
def test_search_parameters_over_http(client: TestClient) -> None:
    cases: list[tuple[str, dict[str, str], list[str]]] = [
        ("Patient", {"identifier": f"{NAM}|GAGM58000002"}, ["pat-2"]),
        ("Patient", {"identifier": "GAGM58000001"}, ["pat-1"]),
        ("Patient", {"identifier": f"{MRN}|"}, ["pat-1", "pat-2"]),
        ("Patient", {"identifier": "https://other.example/|GAGM58000001"}, []),
        ("Patient", {"name": "cote"}, ["pat-2"]),
        ("Patient", {"_id": "pat-1,pat-2,pat-9"}, ["pat-1", "pat-2"]),
        ("Encounter", {"patient": "Patient/pat-1"}, ["enc-1", "enc-2"]),
        ("Encounter", {"patient": "pat-2"}, ["enc-3"]),
        ("Encounter", {"subject": "Patient/pat-1", "class": "IMP"}, ["enc-2"]),
        ("Encounter", {"subject:Patient": "pat-2"}, ["enc-3"]),
        ("Encounter", {"class": "http://terminology.hl7.org/CodeSystem/v3-ActCode|EMER"}, ["enc-1", "enc-3"]),
        ("Encounter", {"status": "in-progress"}, ["enc-3"]),
        ("Encounter", {"status": "finished,in-progress"}, ["enc-1", "enc-2", "enc-3"]),
        ("Encounter", {"date": "2026-03-01"}, ["enc-1"]),
        ("Encounter", {"date": "eq2026-03"}, ["enc-1", "enc-2"]),
        ("Encounter", {"date": "ge2026-03-21"}, ["enc-2", "enc-3"]),  # enc-2 is 02:40Z-06:00Z on the 21st
        ("Encounter", {"date": "ge2026-03-22"}, ["enc-3"]),
        ("Encounter", {"date": "le2026-03-21"}, ["enc-1", "enc-2"]),
        ("Encounter", {"date": "gt2026-03-21T06:00:00Z"}, ["enc-3"]),
        ("Encounter", {"date": "lt2026-03-20T22:40:00-04:00"}, ["enc-1"]),
        ("Encounter", {"date": "ge2026-03-01T13:15:00Z"}, ["enc-1", "enc-2", "enc-3"]),
        ("Encounter", {"identifier": "V2026002"}, ["enc-2"]),
        ("Condition", {"code": "http://hl7.org/fhir/sid/ca-icd-10-ca|F10.2"}, ["cond-2"]),
        ("Condition", {"code": "J44.1"}, ["cond-1"]),
        ("Condition", {"encounter": "Encounter/enc-3"}, ["cond-2"]),
        ("Condition", {"patient": "pat-1"}, ["cond-1"]),
        ("Condition", {"subject": "http://elsewhere.example/fhir/Patient/pat-2"}, ["cond-2"]),
    ]
    for rtype, params, expected in cases:
        bundle = _search(client, rtype, **params)
        assert bundle["type"] == "searchset"
        assert sorted(_ids(bundle)) == expected, (rtype, params)
        assert bundle["total"] == len(expected)
        for entry in bundle.get("entry", []):
            assert entry["fullUrl"] == f"http://testserver/fhir/{rtype}/{entry['resource']['id']}"
            assert entry["search"]["mode"] == "match"


def test_last_updated_and_sort_over_http(client: TestClient, visits: FhirStore) -> None:
    stamp = visits.read("Patient", "pat-2").resource["meta"]["lastUpdated"]  # type: ignore[index]
    client.put("/fhir/Patient/pat-3", json=patient(3))
    assert "pat-3" in _ids(_search(client, "Patient", _lastUpdated=f"gt{stamp}"))
    assert _ids(_search(client, "Patient", _lastUpdated="lt2000")) == []
    assert _ids(_search(client, "Patient", _sort="-_lastUpdated"))[0] == "pat-3"
    assert _ids(_search(client, "Patient", _sort="_lastUpdated"))[-1] == "pat-3"


def test_paging_through_next_links_until_exhausted(client: TestClient, store: FhirStore) -> None:
    store.upsert_many([encounter(n, f"pat-{n % 7}") for n in range(123)])
    url: str | None = "/fhir/Encounter?_count=10&status=finished"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = client.get(url).json()
        pages += 1
        assert bundle["total"] == 123
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert ("previous" in links) == (pages > 1)
        query = parse_qsl(urlsplit(links["self"]).query)
        assert ("status", "finished") in query
        assert [k for k, _v in query].count("_count") == 1
        seen += _ids(bundle)
        url = links.get("next")
    assert pages == 13
    assert len(seen) == 123
    assert len(set(seen)) == 123
    default = _search(client, "Encounter")
    assert len(default["entry"]) == 50
    assert len(_search(client, "Encounter", _count="5000")["entry"]) == 123
    back = client.get(links["previous"]).json()
    assert _ids(back) == seen[-13:-3]


@pytest.mark.usefixtures("visits")
def test_include_and_summary_count(client: TestClient) -> None:
    bundle = _search(client, "Encounter", **{"_include": "Encounter:subject", "class": "EMER"})
    assert sorted(_ids(bundle)) == ["enc-1", "enc-3"]
    assert sorted(_ids(bundle, "include")) == ["pat-1", "pat-2"]
    assert bundle["total"] == 2
    pats = client.get("/fhir/Condition?_include=Condition:patient&_include=Condition:encounter&code=J44.1").json()
    assert sorted(_ids(pats, "include")) == ["enc-1", "pat-1"]
    counted = _search(client, "Encounter", _summary="count")
    assert counted["total"] == 3
    assert "entry" not in counted


@pytest.mark.usefixtures("visits")
def test_unknown_parameters_lenient_by_default_strict_on_request(client: TestClient) -> None:
    lenient = _search(client, "Encounter", colour="blue", status="finished")
    assert sorted(_ids(lenient)) == ["enc-1", "enc-2"]
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "colour" not in lenient["link"][0]["url"]
    strict = client.get("/fhir/Encounter", params={"colour": "blue"}, headers={"Prefer": "handling=strict"})
    _outcome(strict, 400)
    _outcome(client.get("/fhir/Encounter", params={"_include": "Encounter:nothing"},
                        headers={"Prefer": "handling=strict"}), 400)
    for params in ({"date": f"le{CANARY}"}, {"_count": "many"}, {"status:not": "finished"},
                   {"_sort": "date"}, {"patient": f"{CANARY}/x/y"}):
        resp = client.get("/fhir/Encounter", params=params)
        _outcome(resp, 400)
        assert CANARY not in resp.text


@pytest.mark.usefixtures("visits")
def test_post_search_and_history_endpoints(client: TestClient) -> None:
    resp = client.post("/fhir/Encounter/_search", content=b"patient=pat-1&class=IMP",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200
    assert _ids(resp.json()) == ["enc-2"]
    history = _search(client, "Encounter/_history", _count="2")
    assert history["total"] == 3
    assert len(history["entry"]) == 2
    assert history["entry"][0]["request"] == {"method": "PUT", "url": "Encounter/enc-3"}
    rest = client.get(next(link["url"] for link in history["link"] if link["relation"] == "next")).json()
    assert [e["resource"]["id"] for e in rest["entry"]] == ["enc-1"]
    assert _search(client, "Encounter/_history", _since="2999-01-01")["total"] == 0
    _outcome(client.get("/fhir/Encounter/_history", params={"_since": "soon"}), 400)


def test_every_kind_of_response_is_valid_fhir(client: TestClient, visits: FhirStore) -> None:
    visits.delete("Encounter", "enc-2")
    for path in ("metadata", "Encounter?_include=Encounter:subject&colour=blue", "Encounter/_history",
                 "Encounter/enc-2/_history", "Encounter/enc-2", "Patient/pat-1", "Basic/1"):
        validate(client.get(f"/fhir/{path}").json())
    validate(client.delete("/fhir/Encounter/enc-1").json())


# -- CapabilityStatement -------------------------------------------------------------------------
def test_metadata_lists_exactly_what_the_search_supports(client: TestClient) -> None:
    resp = client.get("/fhir/metadata")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith(FHIR)
    cap = resp.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    assert "json" in cap["format"]
    rest = cap["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch"}
    listed = {r["type"]: r for r in rest["resource"]}
    assert set(listed) == set(SEARCH_PARAMS)
    sample = {"token": "x", "reference": "Patient/x", "date": "ge2026-01-01", "string": "x"}
    for rtype, res in listed.items():
        params = {p["name"]: p["type"] for p in res["searchParam"]}
        assert params == {name: p.type for name, p in SEARCH_PARAMS[rtype].items()}, rtype
        assert res["searchInclude"] == [f"{rtype}:{p.name}" for p in include_params(rtype)]
        assert {i["code"] for i in res["interaction"]} == {
            "read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"}
        assert res["conditionalUpdate"] is True
        assert res["versioning"] == "versioned-update"
        for name, ptype in params.items():
            strict = client.get(f"/fhir/{rtype}", params={name: sample[ptype]},
                                headers={"Prefer": "handling=strict"})
            assert strict.status_code == 200, (rtype, name, strict.text)
        for include in res["searchInclude"]:
            resp = client.get(f"/fhir/{rtype}", params={"_include": include}, headers={"Prefer": "handling=strict"})
            assert resp.status_code == 200, include
    unlisted = client.get("/fhir/Patient", params={"address-city": "x"}, headers={"Prefer": "handling=strict"})
    _outcome(unlisted, 400)

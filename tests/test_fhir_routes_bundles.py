"""Transaction and batch Bundles posted to the FHIR base, through HTTP."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from gateway.fhirstore import FhirStore
from tests.test_fhirstore_data import NAM, VISIT, condition, encounter, patient

CANARY = "Canarifamille"


def _without_id(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "id"}


def _admission_bundle(btype: str = "transaction") -> dict[str, Any]:
    pat = _without_id(patient(1))
    enc = _without_id(encounter(1, "x")) | {"subject": {"reference": "urn:uuid:6a1f7c1e-0000-4000-8000-000000000001"}}
    cond = _without_id(condition(1, "x", "y")) | {
        "subject": {"reference": "urn:uuid:6a1f7c1e-0000-4000-8000-000000000001"},
        "encounter": {"reference": "urn:uuid:6a1f7c1e-0000-4000-8000-000000000002"}}
    return {"resourceType": "Bundle", "type": btype, "entry": [
        {"fullUrl": "urn:uuid:6a1f7c1e-0000-4000-8000-000000000001", "resource": pat,
         "request": {"method": "PUT", "url": f"Patient?identifier={NAM}|GAGM58000001"}},
        {"fullUrl": "urn:uuid:6a1f7c1e-0000-4000-8000-000000000002", "resource": enc,
         "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": "urn:uuid:6a1f7c1e-0000-4000-8000-000000000003", "resource": cond,
         "request": {"method": "POST", "url": "Condition"}},
    ]}


def test_transaction_resolves_urn_uuid_references(client: TestClient, store: FhirStore) -> None:
    resp = client.post("/fhir", json=_admission_bundle())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created"] * 3
    locations = [e["response"]["location"] for e in body["entry"]]
    assert all(loc.endswith("/_history/1") for loc in locations)
    assert all(e["response"]["etag"] == 'W/"1"' for e in body["entry"])
    pat_ref, enc_ref, cond_ref = (loc.rsplit("/_history", 1)[0] for loc in locations)
    cond = client.get(f"/fhir/{cond_ref}").json()
    assert cond["subject"]["reference"] == pat_ref
    assert cond["encounter"]["reference"] == enc_ref
    assert client.get(f"/fhir/{enc_ref}").json()["subject"]["reference"] == pat_ref
    # the same transaction again: the conditional PUT finds the patient, nothing changes for it
    again = client.post("/fhir/", json=_admission_bundle()).json()
    assert again["entry"][0]["response"]["status"] == "200 OK"
    assert again["entry"][0]["response"]["location"] == locations[0]
    assert store.counts() == {"Patient": 1, "Encounter": 2, "Condition": 2}


def test_transaction_is_all_or_nothing(client: TestClient, store: FhirStore) -> None:
    client.put("/fhir/Patient/pat-9", json=patient(9))
    for poison, status in [
        ({"resource": _without_id(patient(2, family=CANARY)) | {"birthDate": "1958-02-31"},
          "request": {"method": "POST", "url": "Patient"}}, 422),
        ({"request": {"method": "DELETE", "url": "Patient/nobody"}}, 404),
        ({"resource": patient(9, family=CANARY),
          "request": {"method": "PUT", "url": "Patient/pat-9", "ifMatch": 'W/"7"'}}, 412),
        ({"resource": _without_id(encounter(5, "x")) | {"subject": {"reference": "urn:uuid:not-in-this-bundle"}},
          "request": {"method": "POST", "url": "Encounter"}}, 400),
        ({"resource": {"resourceType": "Basic", "code": {"text": CANARY}},
          "request": {"method": "POST", "url": "Basic"}}, 405),
        ({"request": {"method": "PATCH", "url": "Patient/pat-9"}}, 405),
    ]:
        bundle = _admission_bundle()
        bundle["entry"].append(poison)
        resp = client.post("/fhir", json=bundle)
        assert resp.status_code == status, (poison, resp.text)
        outcome = resp.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["diagnostics"].startswith("entry 3:")
        assert CANARY not in resp.text
        assert store.counts() == {"Patient": 1}, poison
        assert store.read("Patient", "pat-9").version == 1


def test_transaction_delete_conditional_reference_and_read(client: TestClient, store: FhirStore) -> None:
    store.upsert_many([patient(1), encounter(1, "pat-1"), encounter(2, "pat-1")])
    new_visit = _without_id(encounter(3, "x")) | {"subject": {"reference": f"Patient?identifier={NAM}|GAGM58000001"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient/pat-1"}},
        {"resource": new_visit, "request": {"method": "PUT", "url": f"Encounter?identifier={VISIT}|V2026003"}},
        {"request": {"method": "DELETE", "url": "Encounter/enc-2"}},
        {"request": {"method": "GET", "url": "Encounter?patient=pat-1"}},
    ]}
    body = client.post("/fhir", json=bundle).json()
    assert [e["response"]["status"] for e in body["entry"]] == ["200 OK", "201 Created", "200 OK", "200 OK"]
    assert body["entry"][0]["resource"]["id"] == "pat-1"
    assert body["entry"][2]["response"]["etag"] == 'W/"2"'
    found = body["entry"][3]["resource"]
    assert found["type"] == "searchset"
    assert found["total"] == 2
    created = body["entry"][1]["response"]["location"].rsplit("/_history", 1)[0]
    assert client.get(f"/fhir/{created}").json()["subject"]["reference"] == "Patient/pat-1"
    ambiguous = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _without_id(encounter(4, "x")) | {"subject": {"reference": "Patient?gender=female"}},
         "request": {"method": "POST", "url": "Encounter"}}]}
    store.upsert_many([patient(2)])
    assert client.post("/fhir", json=ambiguous).status_code == 412


def test_transaction_refuses_two_entries_for_one_resource(client: TestClient, store: FhirStore) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(1), "request": {"method": "PUT", "url": "Patient/pat-1"}},
        {"resource": patient(1, family="Roy"), "request": {"method": "PUT", "url": "Patient/pat-1"}}]}
    assert client.post("/fhir", json=bundle).status_code == 400
    assert store.counts() == {}


def test_batch_entries_succeed_or_fail_alone(client: TestClient, store: FhirStore) -> None:
    store.upsert_many([patient(9)])
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(1), "request": {"method": "PUT", "url": "Patient/pat-1"}},
        {"resource": patient(2, family=CANARY) | {"gender": "f"}, "request": {"method": "PUT", "url": "Patient/pat-2"}},
        {"resource": _without_id(encounter(1, "pat-1")), "request": {"method": "POST", "url": "Encounter"}},
        {"request": {"method": "DELETE", "url": "Patient/nobody"}},
        {"resource": patient(9, family="Roy"),
         "request": {"method": "PUT", "url": "Patient/pat-9", "ifMatch": 'W/"3"'}},
        {"request": {"method": "GET", "url": "Patient/pat-9"}},
        {"resource": _without_id(encounter(2, "x")) | {"subject": {"reference": "urn:uuid:elsewhere"}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"request": {"url": "Patient"}},
        "not an entry",
    ]}
    resp = client.post("/fhir", json=bundle)
    assert resp.status_code == 200
    body = resp.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "201 Created", "404 Not Found",
                        "412 Precondition Failed", "200 OK", "400 Bad Request", "400 Bad Request", "400 Bad Request"]
    for entry in body["entry"]:
        if not entry["response"]["status"].startswith("2"):
            assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert CANARY not in resp.text
    assert store.counts() == {"Patient": 2, "Encounter": 1}
    assert store.read("Patient", "pat-9").version == 1


def test_only_transaction_and_batch_bundles_are_accepted(client: TestClient) -> None:
    for body, status in [({"resourceType": "Bundle", "type": "collection", "entry": []}, 400),
                         (patient(1), 400), ({"resourceType": "Bundle", "type": "batch", "entry": {}}, 400)]:
        resp = client.post("/fhir", json=body)
        assert resp.status_code == status
        assert resp.json()["resourceType"] == "OperationOutcome"
    empty = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction"})
    assert empty.status_code == 200
    assert empty.json()["entry"] == []

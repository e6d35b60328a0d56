"""The CapabilityStatement lists what the app serves beyond the store (operations, each with its
OperationDefinition; reads and searches of other types), read from its routes: never less or more."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import Gateway, create_app
from gateway.fhir.models import validate
from gateway.fhirstore.capability import BACKPORT_OPERATIONS, read_routes
from gateway.settings import load_settings


def test_operations_reads_and_searches_are_read_from_route_paths() -> None:
    paths = ["/fhir/Patient/$match", "/fhir/Patient/{rid}/$everything", "/fhir/Group/program/$everything",
             "/fhir/Patient/{rid}/$everything", "/fhir/Group/program", "/fhir/CodeSystem/{rid}", "/fhir/CodeSystem",
             "/fhir/metadata", "/fhir/{rtype}/{rid}", "/fhir/{rtype}", "/hl7v2"]
    defs = {"match": "http://x/match", "everything": "http://x/everything"}
    routes = read_routes(paths, defs)
    assert routes.operations == (("Group", "everything", "http://x/everything"),
                                 ("Patient", "everything", "http://x/everything"),
                                 ("Patient", "match", "http://x/match"))
    assert routes.interactions == (("CodeSystem", "read"), ("CodeSystem", "search-type"), ("Group", "read"))


def test_an_operation_without_a_definition_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\$secret"):
        read_routes(["/fhir/Patient/{rid}/$secret"], {})


@pytest.fixture
def http(tmp_path: Path) -> Iterator[TestClient]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    client = TestClient(create_app(gw))
    yield client
    client.close()
    gw.close()


def test_metadata_lists_every_operation_with_its_definition(http: TestClient) -> None:
    cap = http.get("/fhir/metadata").json()
    validate(cap)
    listed = {(r["type"], op["name"]): op["definition"]
              for r in cap["rest"][0]["resource"] for op in r.get("operation", [])}
    assert set(listed) == {("Patient", "defi-sante-candidates"), ("Patient", "defi-sante-enroll"),
                           ("Patient", "defi-sante-disenroll"), ("Group", "defi-sante-outcomes"),
                           ("Subscription", "status"), ("Subscription", "events")}
    for (rtype, name), definition in listed.items():
        if name in BACKPORT_OPERATIONS:
            assert definition == BACKPORT_OPERATIONS[name]
            continue
        od = http.get(f"/fhir/OperationDefinition/{name}").json()  # ours are served beside it
        assert od["url"] == definition
        assert rtype in od["resource"]
    by_type = {r["type"]: r for r in cap["rest"][0]["resource"]}
    # outside the store: the cohort Group (read, no search) and our conformance resources (read, search by url)
    assert [i["code"] for i in by_type["Group"]["interaction"]] == ["read"]
    assert http.get("/fhir/Group/defi-sante").json()["resourceType"] == "Group"
    assert http.get("/fhir/Group").status_code in (404, 405)
    for rtype in ("CodeSystem", "StructureDefinition", "OperationDefinition"):
        assert [i["code"] for i in by_type[rtype]["interaction"]] == ["read", "search-type"]
        assert [p["name"] for p in by_type[rtype]["searchParam"]] == ["url"]
        found = http.get(f"/fhir/{rtype}").json()
        assert found["total"] >= 1
        one = found["entry"][0]["resource"]
        assert http.get(f"/fhir/{rtype}", params={"url": one["url"]}).json()["total"] == 1
        assert http.get(f"/fhir/{rtype}/{one['id']}").json()["url"] == one["url"]

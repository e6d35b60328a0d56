"""The CapabilityStatement lists the operations the app answers: read from its routes, each with its
OperationDefinition, so it never lists less or more than what is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import Gateway, create_app
from gateway.fhir.models import validate
from gateway.fhirstore.capability import BACKPORT_OPERATIONS, route_operations
from gateway.settings import load_settings


def test_operations_are_read_from_route_paths() -> None:
    paths = ["/fhir/Patient/$match", "/fhir/Patient/{rid}/$everything", "/fhir/Group/program/$everything",
             "/fhir/Patient/{rid}", "/fhir/metadata", "/hl7v2", "/fhir/Patient/{rid}/$everything"]
    defs = {"match": "http://x/match", "everything": "http://x/everything"}
    assert route_operations(paths, defs) == [("Group", "everything", "http://x/everything"),
                                             ("Patient", "everything", "http://x/everything"),
                                             ("Patient", "match", "http://x/match")]


def test_an_operation_without_a_definition_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\$secret"):
        route_operations(["/fhir/Patient/{rid}/$secret"], {})


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
    group = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Group")
    assert set(group) == {"type", "operation"}  # Group is served through its operation only
    assert http.get("/fhir/Group").status_code in (404, 405)  # no search, no read

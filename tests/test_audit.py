"""Audit: a BALP-shaped FHIR AuditEvent for every read, search and write of patient data.

Stored in ``audit.sqlite`` (0600) and published on the ``audit`` topic; ``pivot audit`` lists
them per patient; denials are audited; an access that cannot be audited is refused (503); no
health data in any log line.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.eventlog.embedded import EmbeddedLog
from gateway.fhir.models import validate
from gateway.fhirstore import FhirStore
from gateway.http import install_fhir_error_handler, make_fhir_router
from gateway.security import Security, install_security
from gateway.security.audit_cli import add_parser, run
from gateway.security.audit_trail import query_audit
from gateway.settings import Settings
from tests.security_helpers import tokens_file

TOKEN = "audit-reader-token-42"
CANARY = "Canarijaune"
PATIENT = {"resourceType": "Patient", "id": "p7", "name": [{"family": CANARY, "given": ["Zéphirine"]}],
           "identifier": [{"system": "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id",
                           "value": "CANZ45561299"}]}
ENCOUNTER = {"resourceType": "Encounter", "id": "e7", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
             "subject": {"reference": "Patient/p7"}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, Settings, EmbeddedLog, Security]]:
    tokens = tokens_file(tmp_path / "tokens.json", {TOKEN: {
        "client_id": "clsc-ehr", "scopes": ["system/Patient.rs", "system/Encounter.cruds"]}})
    settings = Settings(data_dir=tmp_path / "var", auth="tokens", auth_tokens_file=tokens)
    settings.data_dir.mkdir(parents=True)
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    store.upsert_many([PATIENT, ENCOUNTER])
    log = EmbeddedLog(settings.data_dir / "log.sqlite")
    security = Security(settings, event_log=log)
    app = FastAPI()
    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    install_fhir_error_handler(app)
    install_security(app, security)
    with TestClient(app, raise_server_exceptions=False) as tc:
        yield tc, settings, log, security
    security.close()
    log.close()
    store.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _events(settings: Settings) -> list[dict[str, Any]]:
    return query_audit(settings.data_dir / "audit.sqlite")


def test_read_and_search_are_audited_with_who_what_outcome(
        env: tuple[TestClient, Settings, EmbeddedLog, Security], caplog: pytest.LogCaptureFixture) -> None:
    tc, settings, log, security = env
    caplog.set_level(logging.DEBUG)
    assert tc.get("/fhir/Patient/p7", headers=_auth()).status_code == 200
    assert tc.get("/fhir/Encounter", params={"subject": "Patient/p7"}, headers=_auth()).status_code == 200
    read, search = _events(settings)
    for event in (read, search):
        validate(event)  # a valid FHIR R4 AuditEvent
        assert event["type"]["code"] == "rest"
        assert event["outcome"] == "0"
        client = event["agent"][0]
        assert client["who"]["identifier"]["value"] == "clsc-ehr"
        assert client["requestor"] is True
        assert client["network"]["address"] == "testclient"
        assert event["source"]["observer"]["display"] == "Pivot gateway"
        patients = [e["what"]["reference"] for e in event["entity"] if e["role"]["code"] == "1"]
        assert patients == ["Patient/p7"]
    assert read["subtype"][0]["code"] == "read"
    assert read["action"] == "R"
    assert read["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientRead")
    assert search["subtype"][0]["code"] == "search-type"
    assert search["action"] == "E"
    query = next(e for e in search["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == "Encounter?subject=Patient%2Fp7"
    # the AuditEvent names the patient by reference only: no resource content
    assert CANARY not in json.dumps(read)
    assert "CANZ45561299" not in json.dumps(search)
    # stored 0600 and published on the audit topic (the table is the topic's outbox)
    assert stat.S_IMODE((settings.data_dir / "audit.sqlite").stat().st_mode) == 0o600
    security.audit.close()
    published = log.read_all(settings.topic("audit"))
    assert [json.loads(r.value)["id"] for r in published] == [read["id"], search["id"]]
    # no health data in any log line
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert CANARY not in text
    assert "CANZ45561299" not in text
    assert TOKEN not in text


def test_writes_and_denials_are_audited(env: tuple[TestClient, Settings, EmbeddedLog, Security]) -> None:
    tc, settings, _, _ = env
    updated = {**ENCOUNTER, "status": "in-progress"}
    assert tc.put("/fhir/Encounter/e7", json=updated, headers=_auth()).status_code == 200
    assert tc.get("/fhir/Patient/p7").status_code == 401
    assert tc.put("/fhir/Patient/p7", json=PATIENT, headers=_auth()).status_code == 403
    update, unauthenticated, forbidden = _events(settings)
    assert update["subtype"][0]["code"] == "update"
    assert update["action"] == "U"
    assert {"Patient/p7", "Encounter/e7"} <= {e["what"]["reference"] for e in update["entity"]}
    assert unauthenticated["outcome"] == "4"
    assert unauthenticated["agent"][0]["who"]["display"] == "unauthenticated"
    assert forbidden["outcome"] == "4"
    assert forbidden["agent"][0]["who"]["display"] == "clsc-ehr"
    assert "insufficient scope" in forbidden["outcomeDesc"]


def test_an_access_that_cannot_be_audited_is_refused(env: tuple[TestClient, Settings, EmbeddedLog, Security]) -> None:
    tc, _, _, security = env
    security.audit._db.close()  # the audit database fails
    r = tc.get("/fhir/Patient/p7", headers=_auth())
    assert r.status_code == 503
    assert CANARY not in r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_pivot_audit_lists_a_patients_accesses(env: tuple[TestClient, Settings, EmbeddedLog, Security]) -> None:
    tc, settings, _, _ = env
    tc.get("/fhir/Patient/p7", headers=_auth())
    tc.get("/fhir/Encounter/e7", headers=_auth())
    tc.get("/fhir/Patient", params={"_id": "nobody"}, headers=_auth())
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    assert run(settings, parser.parse_args(["audit", "--patient", "p7", "--since", "2020-01-01"]), out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "read" in lines[0]
    assert "client=clsc-ehr" in lines[0]
    assert "Patient/p7" in lines[0]
    assert "Encounter/e7" in lines[1]
    out = io.StringIO()
    run(settings, parser.parse_args(["audit", "--patient", "Patient/p7", "--since", "2999-01-01", "--json"]), out)
    assert json.loads(out.getvalue())["total"] == 0

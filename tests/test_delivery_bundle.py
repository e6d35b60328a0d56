"""Pure parts of delivery: the per-message transaction Bundle, pruning unchanged entries, backoff,
OperationOutcome summaries, configuration errors. No server here (see test_delivery_sekmet.py)."""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway import envelope
from gateway.delivery.bundle import (
    entry_urn,
    iter_references,
    message_bundle,
    message_bundle_json,
    patient_key,
    search_escape,
)
from gateway.delivery.client import FhirRefused, outcome_summary
from gateway.delivery.config import client_from_settings
from gateway.delivery.delta import prune, read_request
from gateway.delivery.retry import backoff_s, next_delay_s, retry_after_s
from gateway.envelope import dumps
from gateway.errors import ConfigError, DeliverError
from gateway.settings import load_settings
from tests.fhir_server_fixtures import sample_resources

SENDER, CID = "URGENCE|CSSS-HSA", "HSA00000007"


def test_bundle_is_deterministic_and_leaves_input_alone() -> None:
    resources = sample_resources(7)
    before = copy.deepcopy(resources)
    one = message_bundle(resources, sender=SENDER, control_id=CID)
    two = message_bundle(copy.deepcopy(resources), sender=SENDER, control_id=CID)
    assert json.dumps(one, sort_keys=False) == json.dumps(two, sort_keys=False)
    assert resources == before
    assert one["type"] == "transaction"
    assert one["id"] == message_bundle([], sender=SENDER, control_id=CID)["id"]
    assert one["id"] != message_bundle(resources, sender=SENDER, control_id="HSA00000008")["id"]
    assert len(one["id"]) == 32
    assert patient_key(one) == resources[0]["id"].encode()


def test_entries_use_conditional_update_on_identifier_else_id() -> None:
    bundle = message_bundle(sample_resources(7), sender=SENDER, control_id=CID)
    urls = {e["resource"]["resourceType"]: e["request"] for e in bundle["entry"]}
    assert all(r["method"] == "PUT" for r in urls.values())
    pat = urlsplit(urls["Patient"]["url"])
    assert pat.path == "Patient"
    assert dict(parse_qsl(pat.query)) == {"identifier": "urn:pivot:id:HSA|HSA100007"}  # first identifier
    loc = dict(parse_qsl(urlsplit(urls["Location"]["url"]).query))
    assert loc == {"identifier": "urn:pivot:location:HSA|URG^CIV07^1"}
    cond = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    assert urls["Condition"]["url"] == f"Condition/{cond['resource']['id']}"
    assert urls["Provenance"]["url"].startswith("Provenance/")


def test_references_between_entries_become_urn_uuids() -> None:
    resources = sample_resources(7)
    bundle = message_bundle(resources, sender=SENDER, control_id=CID)
    urns = {e["fullUrl"] for e in bundle["entry"]}
    assert all(u.startswith("urn:uuid:") for u in urns)
    for entry, res in zip(bundle["entry"], resources, strict=True):
        assert entry["fullUrl"] == entry_urn(res["resourceType"], res["id"])
        assert entry["resource"]["id"] == res["id"]  # client-assigned id kept
        for ref in iter_references(entry["resource"]):
            assert ref["reference"] in urns
    outside = [*resources, {"resourceType": "Observation", "id": "x", "status": "final",
                            "subject": {"reference": "Patient/not-in-bundle"}}]
    obs = message_bundle(outside, sender=SENDER, control_id=CID)["entry"][-1]["resource"]
    assert obs["subject"]["reference"] == "Patient/not-in-bundle"


def test_duplicates_collapse_and_separators_are_escaped() -> None:
    res = {"resourceType": "Patient", "id": "p1", "identifier": [{"value": "no-system"},
                                                              {"system": "urn:a,b", "value": "x|y$z\\"}]}
    newer = {**res, "gender": "other"}
    bundle = message_bundle([res, newer], sender=SENDER, control_id=CID)
    assert len(bundle["entry"]) == 1
    assert bundle["entry"][0]["resource"]["gender"] == "other"
    query = dict(parse_qsl(urlsplit(bundle["entry"][0]["request"]["url"]).query))
    assert query["identifier"] == "urn:a\\,b|x\\|y\\$z\\\\"
    assert search_escape("a,b") == "a\\,b"


def test_bundle_text_is_the_bundle_serialised() -> None:
    """The mapping worker's bundle, built on each resource's text, is byte for byte the dict's JSON."""
    retired = {"resourceType": "Patient", "id": "old", "active": False, "identifier": [{"system": "s", "value": "v"}],
               "link": [{"type": "replaced-by", "other": {"reference": "Patient/p1"}}]}
    tricky = {"resourceType": "Observation", "id": "o1", "status": "final",
              "note": [{"text": 'quoted "reference":"Patient/p1" stays text, é'}],
              "subject": {"reference": "Patient/p1", "display": "x"},
              "performer": [{"reference": "Practitioner/elsewhere"}, {"reference": "Patient/old"}],
              "extension": [{"url": "u", "valueReference": {"reference": "Patient/p1"}}]}
    p1 = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:a,b", "value": "x|y"}]}
    prefix = {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p10"},  # not p1
              "focus": [{"reference": "Patient/p1"}, {"reference": "Patient/p1/_history/2"}]}
    cases: list[list[dict[str, Any]]] = [sample_resources(3), sample_resources(11, site="HDL"),
                                         [p1, retired, tricky, p1], [prefix, p1], []]
    for resources in cases:
        texts = [dumps(res) for res in resources]
        expected = dumps(message_bundle(resources, sender=SENDER, control_id=CID))
        assert message_bundle_json(resources, texts, sender=SENDER, control_id=CID) == expected
    rewritten = json.loads(message_bundle_json([p1, tricky], [dumps(p1), dumps(tricky)], sender=SENDER,
                                               control_id=CID))["entry"][1]["resource"]
    assert rewritten["subject"]["reference"] == entry_urn("Patient", "p1")
    # uuid5(namespace, "Type/id") as before: the urns already delivered never change
    assert entry_urn("Patient", "p1") == "urn:uuid:ba82672d-8bfe-5bab-94bd-4b128a1181e7"
    assert entry_urn("Encounter", "é-1") == "urn:uuid:0de7f793-411d-5f91-a65c-25df1edcf13d"
    assert rewritten["note"][0]["text"].startswith('quoted "reference":"Patient/p1"')


def test_envelope_text_is_the_envelope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "now_iso", lambda: "2026-01-02T03:04:05.678Z")
    for res, resolved in ((sample_resources(2)[0], 3), ({"resourceType": "Flag", "id": "é\"1"}, 0)):
        kwargs = {"site": "HSA é", "control_id": 'C"1', "sender": "URGENCE|HSA", "received_at": "2026-01-01T00:00Z"}
        head = envelope.envelope_head(produced_at="2026-01-02T03:04:05.678Z", **kwargs)
        body = {"schema_version": envelope.SCHEMA_VERSION, "source_site": kwargs["site"], "sender": kwargs["sender"],
                "msh10": kwargs["control_id"], "received_at": kwargs["received_at"],
                "produced_at": "2026-01-02T03:04:05.678Z", "resource": res,
                **({"resolved": resolved} if resolved else {})}
        expected = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")  # the envelope's JSON
        assert envelope.envelope_text(head, dumps(res), resolved) == expected
        assert envelope.fhir_envelope(res, resolved=resolved, **kwargs) == expected


def _reply_for(bundle: dict[str, object], current: list[dict[str, object] | None]) -> dict[str, object]:
    entries = []
    for entry, res in zip(bundle["entry"], current, strict=True):  # type: ignore[call-overload]
        is_search = "?" in entry["request"]["url"]
        if res is None:
            entries.append({"response": {"status": "200 OK"}, "resource": {"resourceType": "Bundle", "total": 0}}
                           if is_search else {"response": {"status": "404 Not Found"}})
        elif is_search:
            entries.append({"response": {"status": "200 OK"},
                            "resource": {"resourceType": "Bundle", "entry": [{"resource": res,
                                                                               "search": {"mode": "match"}}]}})
        else:
            entries.append({"response": {"status": "200 OK"}, "resource": res})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}


def _as_stored(res: dict[str, object], version: str = "3") -> dict[str, object]:
    out = copy.deepcopy(res)
    out["meta"] = {"versionId": version, "lastUpdated": "2026-01-01T00:00:00Z", "source": "elsewhere#1"}
    return out


def test_prune_skips_what_the_server_already_holds() -> None:
    resources = sample_resources(7)
    bundle = message_bundle(resources, sender=SENDER, control_id=CID)
    reads = read_request(bundle)
    assert reads["type"] == "batch"
    assert [e["request"]["url"] for e in reads["entry"]] == [e["request"]["url"] for e in bundle["entry"]]
    assert all(e["request"]["method"] == "GET" for e in reads["entry"])

    new = prune(bundle, _reply_for(bundle, [None] * len(resources)))
    assert new.bundle is bundle
    assert new.unchanged == 0

    same = prune(bundle, _reply_for(bundle, [_as_stored(r) for r in resources]))
    assert same.bundle is None
    assert same.unchanged == len(resources)

    changed = copy.deepcopy(resources)
    changed[0]["gender"] = "male"  # the Patient changed; everything else is already there
    plan = prune(bundle, _reply_for(bundle, [_as_stored(r) for r in changed]))
    assert plan.bundle is not None
    assert plan.unchanged == len(resources) - 1
    (entry,) = plan.bundle["entry"]
    assert entry["resource"]["resourceType"] == "Patient"
    assert entry["resource"]["generalPractitioner"][0]["reference"] == f"Practitioner/{resources[1]['id']}"


def test_prune_follows_ids_the_server_chose_and_writes_when_unsure() -> None:
    resources = sample_resources(7)
    bundle = message_bundle(resources, sender=SENDER, control_id=CID)
    stored = [_as_stored(r) for r in resources]
    stored[1]["id"] = "legacy-practitioner"  # matched by identifier under another id
    for res in stored:
        for ref in iter_references(res):
            ref["reference"] = ref["reference"].replace(resources[1]["id"], "legacy-practitioner")
    assert prune(bundle, _reply_for(bundle, stored)).bundle is None
    stored[0]["gender"] = "male"
    plan = prune(bundle, _reply_for(bundle, stored))
    assert plan.bundle is not None
    assert plan.bundle["entry"][0]["resource"]["generalPractitioner"][0]["reference"] == \
        "Practitioner/legacy-practitioner"
    failed = _reply_for(bundle, [_as_stored(r) for r in resources])
    failed["entry"][2] = {"response": {"status": "400 Bad Request"}}  # type: ignore[index]
    plan = prune(bundle, failed)
    assert plan.bundle is not None
    assert len(plan.bundle["entry"]) == 1
    assert prune(bundle, {"resourceType": "OperationOutcome"}).bundle is bundle


def test_backoff_and_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_s(a, 5.0, rng) for a in range(12)]
    assert all(0 <= d <= 5.0 for d in delays)
    assert max(delays[:2]) <= 0.4
    assert retry_after_s("7") == 7.0
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None
    assert next_delay_s(0, 2.0, 3600.0) == 2.0  # Retry-After is honoured up to the cap


def test_refusal_summary_keeps_codes_and_paths_never_diagnostics() -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "structure", "diagnostics": "bad value 'Tremblay'",
         "expression": ["Patient.birthDate"]},
        {"severity": "error", "code": "invalid", "diagnostics": "HSA100007 unknown"}]}
    exc = FhirRefused(422, outcome)
    assert isinstance(exc, DeliverError)
    assert exc.code == 1700
    assert exc.status == 422
    assert exc.issue_codes == ["structure", "invalid"]
    assert exc.describe() == "HTTP 422: error structure at Patient.birthDate; error invalid"
    assert "Tremblay" not in exc.describe()
    assert "HSA100007" not in exc.describe()
    assert outcome_summary({}) == "no OperationOutcome"


def _client(**overrides: object) -> None:
    client_from_settings(load_settings(**overrides)).close()


@pytest.mark.parametrize(("overrides", "setting"), [
    ({"fhir_base_url": "ftp://x"}, "PIVOT_FHIR_BASE_URL"),
    ({"fhir_auth": "bearer"}, "PIVOT_FHIR_TOKEN"),
    ({"fhir_auth": "bearer", "fhir_token_file": "missing.txt"}, "PIVOT_FHIR_TOKEN_FILE"),
    ({"fhir_auth": "smart", "fhir_private_key_file": "k.pem"}, "PIVOT_FHIR_CLIENT_ID"),
    ({"fhir_auth": "smart", "fhir_client_id": "pivot"}, "PIVOT_FHIR_PRIVATE_KEY_FILE"),
    ({"fhir_auth": "smart", "fhir_client_id": "pivot", "fhir_private_key_file": "missing.pem"},
     "PIVOT_FHIR_PRIVATE_KEY_FILE"),
    ({"fhir_auth": "smart", "fhir_client_id": "pivot", "fhir_private_key_file": "garbage.pem"},
     "PIVOT_FHIR_PRIVATE_KEY_FILE"),
    ({"fhir_ca_bundle": "missing-ca.pem"}, "PIVOT_FHIR_CA_BUNDLE"),
    ({"fhir_ca_bundle": "garbage.pem"}, "PIVOT_FHIR_CA_BUNDLE"),
    ({"fhir_client_key": "garbage.pem"}, "PIVOT_FHIR_CLIENT_CERT"),
    ({"fhir_auth": "oauth"}, "PIVOT_FHIR_AUTH"),
    ({"fhir_retry_max_s": 0}, "PIVOT_FHIR_RETRY_MAX_S"),
])
def test_misconfiguration_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            overrides: dict[str, object], setting: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.pem").write_text("not a key\n")
    with pytest.raises(ConfigError) as info:
        _client(**{"fhir_base_url": "http://127.0.0.1:9/fhir", **overrides})
    assert setting in info.value.message

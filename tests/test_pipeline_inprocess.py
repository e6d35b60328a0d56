"""The pipeline in one process (embedded log): envelopes match the JSON Schemas in schemas/, dead
letters can be listed and replayed, a mapping failure after the AA lands in the dead letters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from connectors.base import Origin
from gateway import intake
from gateway.app import Gateway
from gateway.deadletters import diagnostics, list_deadletters, print_deadletter, replay
from gateway.delivery.bundle import message_bundle
from gateway.drain import wait_drained
from gateway.eventlog.state import handoff
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.topics import FHIR_TYPES

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _schema(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((SCHEMAS / name).read_text())
    return data


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    gw.start_workers()
    yield gw
    gw.close()


def test_envelopes_and_headers_follow_the_schemas(gateway: Gateway) -> None:
    origin = Origin("test", "unit")
    for i in range(5):
        assert gateway.intake.receive(er_message(i), origin).code == "AA"
    assert gateway.intake.receive(b"garbage", origin).code == "AR"
    file_batch = [(er_message(i), Origin("file", "history.hl7")) for i in range(5, 8)]  # the bulk lane
    assert [r.code for r in gateway.intake.receive_many(file_batch)] == ["AA"] * 3
    assert wait_drained(gateway, timeout_s=60)
    validator = jsonschema.Draft202012Validator
    fhir_schema = _schema("fhir-envelope.schema.json")
    count = 0
    for rtype in ("Patient", "Encounter", "Provenance"):
        records = gateway.log.read_all(f"pivot.fhir.{rtype}")
        assert records, rtype
        for rec in records:
            body = json.loads(rec.value)
            validator(fhir_schema).validate(body)
            assert rec.key == body["resource"]["id"].encode()
            assert body["resource"]["resourceType"] == rtype
            count += 1
    assert count >= 15
    _bundles_match_their_resources(gateway, validator(fhir_schema))
    inbound = gateway.log.read_all("pivot.hl7v2.in") + gateway.log.read_all("pivot.hl7v2.bulk")
    assert len(inbound) == 8
    for rec in inbound:
        validator(_schema("hl7v2-in-headers.schema.json")).validate(rec.headers)
    dead = gateway.log.read_all("pivot.deadletter")
    assert len(dead) == 1
    validator(_schema("deadletter-headers.schema.json")).validate(dead[0].headers)


def _bundles_match_their_resources(gateway: Gateway, validator: jsonschema.Draft202012Validator) -> None:
    """Each message's bundle envelope (built from the resources' text) holds ``message_bundle`` of the
    resources published for that message."""
    by_message: dict[str, list[dict[str, object]]] = {}
    for rtype in FHIR_TYPES:
        for rec in gateway.log.read_all(f"pivot.fhir.{rtype}"):
            body = json.loads(rec.value)
            by_message.setdefault(body["msh10"], []).append(body["resource"])
    bundles = gateway.log.read_all("pivot.fhir.Bundle")
    assert len(bundles) == 8  # 5 messages live, 3 from a file
    for rec in bundles:
        body = json.loads(rec.value)
        validator.validate(body)
        expected = message_bundle(by_message[body["msh10"]], sender=body["sender"], control_id=body["msh10"])
        assert body["resource"]["id"] == expected["id"]
        assert sorted(body["resource"]["entry"], key=json.dumps) == sorted(expected["entry"], key=json.dumps)


def test_worker_behind_the_intake_never_resolves_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More messages accepted than the handoff keeps in memory before the mapping worker runs (a
    backfill): the worker still publishes the intake's results, it never maps or resolves again."""
    monkeypatch.setattr(handoff, "MEMORY_ITEMS", 3)
    monkeypatch.setattr(intake, "_CACHE_SIZE", 3, raising=False)  # the plain in-memory cache's bound
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    try:
        origin = Origin("test", "unit")
        replies = gw.intake.receive_many([(er_message(i), origin) for i in range(8)])
        assert [r.code for r in replies] == ["AA"] * 8
        again: list[bytes] = []
        run = gw.pipeline.run
        monkeypatch.setattr(gw.pipeline, "run", lambda raw, *a: again.append(raw) or run(raw, *a))
        gw.start_workers()
        assert wait_drained(gw, timeout_s=60)
        assert again == []
        assert len(gw.log.read_all("pivot.fhir.Bundle")) == 8
    finally:
        gw.close()


def test_duplicate_is_acked_again_and_changes_nothing(gateway: Gateway) -> None:
    origin = Origin("test", "unit")
    first = gateway.intake.receive(er_message(7), origin)
    again = gateway.intake.receive(er_message(7), origin)
    assert (first.code, first.duplicate) == ("AA", False)
    assert (again.code, again.duplicate) == ("AA", True)
    assert len(gateway.log.read_all("pivot.hl7v2.in")) == 1


def test_deadletter_list_and_replay(gateway: Gateway) -> None:
    origin = Origin("test", "unit")
    text = er_message(8).decode()
    broken = "\r".join(s for s in text.split("\r") if not s.startswith("PID")).encode()
    assert gateway.intake.receive(broken, origin).code == "AE"
    items = list_deadletters(gateway)
    assert len(items) == 1
    assert items[0].raw == broken
    assert items[0].stage == "structure"  # the required structure refuses it before mapping
    assert items[0].hl7_code == "100"
    reply = replay(gateway, items[0].id)
    assert reply.code == "AE"  # still broken: refused again, with its reason
    assert len(list_deadletters(gateway)) == 2


def test_deadletter_show_gives_hl7apy_positions_never_values(gateway: Gateway,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The strict diagnostics are computed when someone looks, not on the ACK path."""
    text = er_message(9).decode()
    broken = "\r".join(s for s in text.split("\r") if not s.startswith("PID")).encode()
    assert gateway.intake.receive(broken, Origin("test", "unit")).code == "AE"
    item = list_deadletters(gateway)[0]
    assert "diagnostics" not in gateway.log.read_all("pivot.deadletter")[0].headers
    found = diagnostics(item.raw)
    assert any("PID" in line for line in found), found
    print_deadletter(item)
    out = capsys.readouterr().out
    assert item.reason in out
    assert "hl7apy (strict):" in out
    values = {v for seg in broken.decode().split("\r")[1:] for v in seg.replace("^", "|").split("|")[1:]
              if len(v) >= 5 and v.isalpha()}
    assert values
    assert not [v for v in values if v in out]

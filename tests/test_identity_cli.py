"""``pivot identity duplicates`` / ``rebuild`` (gateway/identity/cli.py) on a real in-process gateway,
resources of a site record moving with it, and no health data in the resolver's logs."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.base import Origin
from gateway.app import Gateway
from gateway.identity import IdentityResolver, cli
from gateway.identity.keys import nam_person_id
from gateway.samples import er_message
from gateway.settings import load_settings
from tests.test_identity_messages import adt, mapped

CANARY = "Zyxwvutsky"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var", workers=False))
    yield gw
    gw.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pivot")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _send(gateway: Gateway, *messages: bytes) -> None:
    for raw in messages:
        assert gateway.intake.receive(raw, Origin("test", "cli")).code == "AA"


def test_duplicates_lists_ids_and_sites_only(gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    _send(gateway, adt("A04", site="HSA", mrn="HSA4", family=CANARY, control_id="1", when="202601010800"),
          adt("A04", site="HLA", mrn="HLA4", family=CANARY, control_id="2", when="202601010900"))
    args = _parser().parse_args(["identity", "duplicates"])
    assert cli.run(args, gateway) == 0
    out = capsys.readouterr().out
    listed = gateway.identity.duplicates()
    assert len(listed) == 2  # one Flag per record
    dup = listed[0]
    assert dup.flag_id in out
    assert dup.patient_a in out
    assert "urn:pivot:id:HLA" in out
    assert CANARY not in out
    assert "HSA4" not in out
    assert cli.run(_parser().parse_args(["identity", "duplicates", "--json"]), gateway) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["flag_id"] == dup.flag_id


def test_rebuild_from_the_log(state_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On both engines (PostgreSQL: PIVOT_STATE_URL): the index emptied, the log replayed: both lanes,
    hl7v2.in (a live message) and hl7v2.bulk (files: ``receive_many``), merged in the order they came in."""
    gateway = Gateway(load_settings(data_dir=tmp_path / "var", workers=False, state_url=state_url))
    try:
        assert gateway.identity.index.db.engine == ("postgresql" if state_url else "sqlite")
        history = Origin("file", "history.hl7")
        assert gateway.intake.receive_many([(adt("A04", site="HSA", mrn="HSA4", control_id="1",
                                                 when="202601010800"), history)])[0].code == "AA"
        _send(gateway, adt("A04", site="HLA", mrn="HLA4", control_id="2", when="202601010900"))
        assert gateway.intake.receive_many([(adt("A08", site="HSA", mrn="HSA4", nam="TREJ40010112", control_id="3",
                                                 when="202601011000"), history)])[0].code == "AA"
        before = gateway.identity.duplicates(include_resolved=True)
        gateway.identity.index.add_person("stray", "urn:pivot:id:HSA|none", None)  # not in the log
        assert cli.run(_parser().parse_args(["identity", "rebuild"]), gateway) == 0
        assert "3 messages resolved, 0 refused, 2 persons" in capsys.readouterr().out
        assert gateway.identity.duplicates(include_resolved=True) == before
        assert gateway.identity.index.person_of_key("urn:pivot:id:HSA|HSA4") == nam_person_id("TREJ40010112")
        assert gateway.identity.index.person("stray") is None
    finally:
        gateway.close()


def test_next_of_kin_and_diagnoses_move_with_the_site_record() -> None:
    resolver = IdentityResolver()
    site_only = er_message(3).split(b"\r")
    pid = next(n for n, seg in enumerate(site_only) if seg.startswith(b"PID|"))
    fields = site_only[pid].split(b"|")
    fields[3] = fields[3].split(b"~")[0]  # the site MRN without the NAM
    site_only[pid] = b"|".join(fields)
    first = resolver.resolve(mapped(b"\r".join(site_only)))
    moved = {r["id"] for r in first.resources if r["resourceType"] in ("RelatedPerson", "Condition", "Encounter")}
    assert len(moved) == 4
    linked = resolver.resolve(mapped(er_message(3, trigger="A08", control_id="HSA-A08")))
    person = linked.patient_id
    again = {r["id"]: r for r in linked.resources if r["id"] in moved}
    assert set(again) == moved  # same ids: they hang on the site record, not on the NAM
    for res in again.values():
        subject = res.get("subject") or res.get("patient")
        assert subject == {"reference": f"Patient/{person}"}


def test_resolver_logs_carry_no_health_data(caplog: pytest.LogCaptureFixture) -> None:
    resolver = IdentityResolver()
    nam = "TREJ40010112"
    with caplog.at_level(logging.DEBUG, logger="pivot"):
        resolver.resolve(mapped(adt("A04", site="HSJ", mrn="HSJ77", family=CANARY, control_id="1",
                                    when="202601010800")))
        resolver.resolve(mapped(adt("A04", site="HSA", mrn="HSA77", family=CANARY, control_id="2",
                                    when="202601010900")))
        resolver.resolve(mapped(adt("A08", site="HSJ", mrn="HSJ77", nam=nam, family=CANARY, control_id="3",
                                    when="202601011000")))
        resolver.resolve(mapped(adt("A08", site="HSJ", mrn="HSJ77", nam="TREJ40130112", family=CANARY,
                                    control_id="4", when="202601010930")))
    text = caplog.text
    assert "joined" in text
    assert "invalid NAM dropped" in text
    for secret in (CANARY, nam, "TREJ40130112", "HSJ77", "HSA77", "1940"):
        assert secret not in text

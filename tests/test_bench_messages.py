"""The benchmark's site messages (gateway.samples.site_message): what the bench sends must be what a
Québec ER sends and what both Pivot and the Python peer take, or its figures measure refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.base import Origin
from gateway.app import Gateway
from gateway.samples import site_message, site_person
from gateway.settings import load_settings

MLLP = Origin("mllp", "127.0.0.1")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path_factory.mktemp("bench-messages") / "var", workers=False))
    yield gw
    gw.close()


def segments(raw: bytes) -> list[str]:
    return [s.split("|", 1)[0] for s in raw.decode("utf-8").split("\r") if s]


def test_site_a04_is_a_realistic_er_registration() -> None:
    raw = site_message(42)
    assert 1_300 <= len(raw) <= 1_600
    assert segments(raw) == ["MSH", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "DG1", "DG1", "ZER"]
    pid = raw.decode().split("\r")[2].split("|")
    assert f"{site_person(42).nam}^^^RAMQ^JHN" in pid[3]
    assert "^MR^" in pid[3]
    pv1 = next(s for s in raw.decode().split("\r") if s.startswith("PV1|")).split("|")
    assert pv1[2] == "E"
    assert pv1[19].endswith("^VN")
    assert segments(site_message(42, trigger="A03")) == ["MSH", "EVN", "PID", "PD1", "PV1", "PV2", "DG1", "DG1",
                                                         "ZER"]


def test_site_people_are_distinct() -> None:
    nams = {site_person(i).nam for i in range(0, 3_000_000, 331)}
    assert len(nams) == len(range(0, 3_000_000, 331))


@pytest.mark.parametrize(("trigger", "modes", "code"), [
    ("A04", ("", ""), "AA"), ("A04", ("AL", "NE"), "CA"), ("A08", ("", ""), "AA"), ("A03", ("", ""), "AA")])
def test_intake_accepts_site_messages_without_warnings(gateway: Gateway, trigger: str, modes: tuple[str, str],
                                                       code: str) -> None:
    reply = gateway.intake.receive(site_message(7, trigger=trigger, ack_modes=modes), MLLP)
    assert reply.code == "AA"
    assert len(reply.acks) == 1
    ack = reply.acks[0].decode()
    assert f"MSA|{code}|" in ack
    assert "ERR|" not in ack  # nothing the mapping dropped


def test_python_peer_converts_and_validates_the_a04() -> None:
    pytest.importorskip("v2fhir", reason="the bench extra (hl7v2-fhir-bridge) is not installed")
    from v2fhir.config import load_config
    from v2fhir.convert import convert
    from v2fhir.hl7.parser import parse_bytes
    from v2fhir.validate import validate_bundle

    bundle = convert(parse_bytes(site_message(7)), load_config()).bundle
    validate_bundle(bundle)  # raises on an invalid Bundle
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Patient", "Encounter"} <= types

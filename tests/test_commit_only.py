"""Enhanced mode with no application ACK (MSH-15 AL, MSH-16 NE) from a sender on the line (issue #14):
the commit ACK means "stored" (HL7 v2.5 §2.9.3), so the intake stores the message unmapped and answers
CA at once; the mapping worker maps and resolves it and writes its review entries or dead letter.
What is checked before the CA (structure, resends) and what other transports get stay as they were."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Origin
from gateway.app import Gateway
from gateway.deadletters import list_deadletters
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.topics import HL7V2_IN, fhir_topic
from gateway.workers import MappingWorker
from tests.e2e_helpers import FrameReader, ack_field, entries, search, wait_for

MLLP = Origin("mllp", "127.0.0.1:5000")
NE = ("AL", "NE")


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    """An in-process gateway whose workers the test runs itself."""
    gateway = Gateway(load_settings(data_dir=tmp_path / "var", workers=False))
    yield gateway
    gateway.close()


def _map(gateway: Gateway) -> None:
    """The mapping worker over everything in hl7v2.in."""
    worker = MappingWorker(gateway.settings, gateway.log, gateway.metrics, gateway.pipeline, gateway.cache,
                           hooks=[gateway.rules, gateway.pharmacy])
    worker.handle(gateway.log.read_all(gateway.settings.topic(HL7V2_IN)))


def _published(gateway: Gateway, rtype: str) -> list[bytes]:
    return [r.value for r in gateway.log.read_all(gateway.settings.topic(fhir_topic(rtype)))]


def _with_nam_of(raw: bytes, other: bytes, control_id: str) -> bytes:
    """``raw`` with the health insurance number (NAM) of ``other`` and another MSH-10."""
    mine, theirs = (parse(m).first("PID").get(3, 1, rep=2) for m in (raw, other))  # type: ignore[union-attr]
    return raw.replace(mine.encode(), theirs.encode()).replace(parse(raw).control_id.encode(), control_id.encode(), 1)


def test_ne_is_acknowledged_stored_and_mapped_by_the_worker(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = er_message(1, ack_modes=NE)
    reply = gw.intake.receive(raw, MLLP)
    assert reply.code == "AA"
    assert [ack_field(a, "MSA", 1) for a in reply.acks] == ["CA"]
    assert ack_field(reply.acks[0], "MSA", 2) == parse(raw).control_id
    (rec,) = gw.log.read_all(gw.settings.topic(HL7V2_IN))
    assert rec.value == raw
    assert rec.headers["deferred"] == "1"
    assert gw.intake.identity.index.active_persons() == 0  # not mapped nor resolved before the CA
    assert _published(gw, "Patient") == []
    looked_up: list[str] = []

    def take_many(keys: list[str]) -> dict[str, object]:
        looked_up.extend(keys)
        return {}

    monkeypatch.setattr(gw.cache, "take_many", take_many)
    _map(gw)
    assert looked_up == []  # nothing was handed over: the handoff is not asked
    assert gw.intake.identity.index.active_persons() == 1
    assert len(_published(gw, "Patient")) == 1
    assert len(_published(gw, "Encounter")) == 1
    assert list_deadletters(gw) == []


def test_the_worker_publishes_what_the_intake_would_have(tmp_path: Path) -> None:
    """The same message, deferred or mapped at the intake (MSH-16 AL), gives the same resources."""
    published: list[dict[str, list[str]]] = []
    for n, modes in enumerate((NE, ("AL", "AL"))):
        gateway = Gateway(load_settings(data_dir=tmp_path / f"var{n}", workers=False))
        try:
            assert gateway.intake.receive(er_message(2, ack_modes=modes), MLLP).code == "AA"
            _map(gateway)
            published.append({t: sorted(_ids(_published(gateway, t))) for t in
                              ("Patient", "Encounter", "Condition", "RelatedPerson", "Practitioner")})
        finally:
            gateway.close()
    assert published[0] == published[1]
    assert all(published[0].values())


def _ids(values: list[bytes]) -> list[str]:
    import json

    return [json.loads(v)["resource"]["id"] for v in values]


def test_a_dropped_value_becomes_one_review_entry_from_the_worker(gw: Gateway) -> None:
    raw = er_message(3, ack_modes=NE)
    pv1 = next(s for s in raw.split(b"\r") if s.startswith(b"PV1"))
    raw = raw.replace(pv1, pv1 + b"|202512311200")  # PV1-45 before the visit's start: dropped, a warning
    reply = gw.intake.receive(raw, MLLP)
    assert [ack_field(a, "MSA", 1) for a in reply.acks] == ["CA"]
    assert list_deadletters(gw) == []  # nothing known yet
    _map(gw)
    (review,) = list_deadletters(gw)
    assert (review.stage, review.control_id, review.raw) == ("warning", parse(raw).control_id, raw)
    assert "PV1-45" in review.reason
    assert len(_published(gw, "Encounter")) == 1  # accepted: the rest is published


def test_a_mapping_refusal_is_a_dead_letter_with_its_reason(gw: Gateway) -> None:
    first = er_message(4, ack_modes=NE)
    other = _with_nam_of(first, er_message(5), "CONFLICT1")  # the same site record, another NAM: 205
    for raw in (first, other):
        assert [ack_field(a, "MSA", 1) for a in gw.intake.receive(raw, MLLP).acks] == ["CA"]
    _map(gw)
    (dead,) = list_deadletters(gw)
    assert (dead.stage, dead.control_id, dead.raw) == ("map", "CONFLICT1", other)
    assert "NAM" in dead.reason
    assert len(_published(gw, "Patient")) == 1


def test_what_is_checked_before_the_ca_still_is(gw: Gateway) -> None:
    raw = er_message(6, ack_modes=NE)
    no_pid = b"\r".join(s for s in raw.split(b"\r") if not s.startswith(b"PID"))
    reply = gw.intake.receive(no_pid, MLLP)
    assert [ack_field(a, "MSA", 1) for a in reply.acks] == ["CE"]  # required structure: refused at once
    assert gw.intake.receive(raw, MLLP).code == "AA"
    again = gw.intake.receive(raw, MLLP)  # a resend: CA again, nothing stored twice
    assert again.duplicate
    assert [ack_field(a, "MSA", 1) for a in again.acks] == ["CA"]
    assert len(gw.log.read_all(gw.settings.topic(HL7V2_IN))) == 1


@pytest.mark.parametrize("transport", ["file", "replay", "kafka"])
def test_other_transports_get_the_mapping_outcome(gw: Gateway, transport: str) -> None:
    """A file, a topic or a replay is not waiting on a line: the intake maps it and its reply says so."""
    first = er_message(7, ack_modes=NE)
    origin = Origin(transport, "x")
    assert gw.intake.receive(first, origin).code == "AA"
    (rec,) = gw.log.read_all(gw.settings.topic(HL7V2_IN))
    assert "deferred" not in rec.headers
    assert gw.intake.identity.index.active_persons() == 1
    conflict = gw.intake.receive(_with_nam_of(first, er_message(8), "CONFLICT2"), origin)
    assert conflict.code == "AE"


def test_pivot_serve_answers_ca_and_the_patient_is_readable(serve_factory: Any) -> None:
    gw = serve_factory().start()
    import socket

    raw = er_message(9, ack_modes=NE)
    with socket.create_connection(("127.0.0.1", gw.mllp_port)) as sock:
        sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
        ack = FrameReader(sock).frame()
    assert ack_field(ack, "MSA", 1) == "CA"
    visit = parse(raw).first("PV1").get(19)  # type: ignore[union-attr]
    (enc,) = wait_for(lambda: entries(search(gw.base, "Encounter", identifier=visit), "Encounter"))
    assert enc["subject"]["reference"].startswith("Patient/")

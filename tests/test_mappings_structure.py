"""Required structure (issue #12 item 4): what the standard requires per message structure is
checked after parsing (mappings/codemaps/required-structure.json); a missing segment is ERR-3 100,
a missing field 101, both at their place in ERR-2; the gateway answers AE (original mode) or CE
(enhanced mode, before the commit) and keeps a dead letter; a sender profile may relax only what
the table calls relaxable."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.base import Origin
from connectors.mllp import MllpServer, frame
from gateway.app import Gateway
from gateway.deadletters import list_deadletters
from gateway.errors import ConfigError, StructureError
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import load_settings
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, check_required, map_message
from mappings.structure import REQUIRED
from tests.e2e_helpers import FrameReader, ack_field
from tests.test_mappings_messages import drop, edit
from tests.test_pharmacy_support import message, seg

PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
A04 = er_message(4)
CUT = A04.split(b"\rPID|")[0] + b"\rPID|1||12\r"  # the A04 cut after `PID|1||12`


def run(raw: bytes, relax: frozenset[str] = frozenset()) -> MapResult:
    msg = parse(raw)
    profile = replace(PROFILES.for_message(msg), relax=relax)
    return map_message(msg, MapContext(profile, SYSTEMS, datetime(2026, 1, 1, tzinfo=UTC)))


def refusal(raw: bytes, relax: frozenset[str] = frozenset()) -> tuple[str, str]:
    with pytest.raises(StructureError) as info:
        run(raw, relax)
    assert info.value.ack_code == "AE"
    location = info.value.location
    assert location is not None
    return info.value.hl7_code, location.er7()


@pytest.mark.parametrize(("raw", "expected"), [
    (CUT, ("100", "PV1^1")),                                  # no PV1 (and no name)
    (drop(A04, "PV1"), ("100", "PV1^1")),
    (edit(A04, "PID", 5, ""), ("101", "PID^1^5")),
    (edit(A04, "PID", 5, '""'), ("101", "PID^1^5")),          # the HL7 null is not a name
    (edit(A04, "PID", 5, "^^^~^"), ("101", "PID^1^5")),       # delimiters only
    (edit(A04, "PID", 3, ""), ("101", "PID^1^3")),
    (drop(A04, "EVN"), ("100", "EVN^1")),                     # ADT_A01 requires EVN (issue #12)
    (edit(A04, "PV1", 2, ""), ("101", "PV1^1^2")),
    (drop(er_message(4, trigger="A40"), "MRG"), ("100", "MRG^1")),
])
def test_a_missing_required_segment_or_field_is_refused_at_its_place(raw: bytes, expected: tuple[str, str]) -> None:
    assert refusal(raw) == expected


def test_every_occurrence_of_a_segment_is_checked() -> None:
    a40 = er_message(5, trigger="A40").decode().replace("PD1|", "MRG|HSA999^^^HSA^MR\rPD1|", 1)
    second = a40 + "PID|2||HSA100009^^^HSA^MR\rMRG|HSA998^^^HSA^MR\r"  # second patient group without name
    assert refusal(second.encode()) == ("101", "PID^2^5")
    run(a40.encode())  # the first group alone is complete


def test_pharmacy_structures_require_pid_orc_and_their_segment() -> None:
    rxd = seg("RXD", f1="1", f2="99100052^Atorvastatine^DIN", f3="20260301", f4="30", f5="CO")
    assert refusal(message("RDS^O13", "C1", "PH", [rxd])) == ("100", "ORC^1")
    assert refusal(message("RDS^O13", "C1", "PH", [seg("ORC", f3="RX1"), rxd])) == ("101", "ORC^1^1")
    assert refusal(message("RDE^O11", "C1", "PH", [seg("ORC", f1="NW")])) == ("100", "RXE^1")
    check_required(parse(message("RDS^O13", "C1", "PH", ["ZPR|1|PROFILE|20260301"])))  # a profile may be empty
    check_required(parse(message("RDS^O13", "C1", "PH", [seg("ORC", f1="RE"), rxd], name="")))  # NAM-only PID


def test_relaxations_come_from_the_sender_profile_and_only_for_what_is_relaxable(tmp_path: Path) -> None:
    run(drop(A04, "EVN"), frozenset({"EVN"}))
    a31 = drop(er_message(4, trigger="A31"), "PV1")
    assert refusal(a31) == ("100", "PV1^1")
    assert refusal(drop(A04, "PV1"), frozenset({"A31:PV1"})) == ("100", "PV1^1")  # only for A31
    run(a31, frozenset({"A31:PV1"}))
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"senders": [{"application": "URGENCE", "facility": "CSSS-SOMMETS-HSA",
                                             "relax": ["EVN", "A31:PV1"]}]}))
    assert Profiles.load(path, "America/Montreal").for_message(parse(A04)).relax == {"EVN", "A31:PV1"}
    for bad in (["PID-5"], ["PV1"], ["A04:PV1"], "EVN", [1]):
        path.write_text(json.dumps({"senders": [{"facility": "X", "relax": bad}]}))
        with pytest.raises(ConfigError):
            Profiles.load(path, "America/Montreal")


def test_every_supported_structure_has_requirements() -> None:
    assert {"ADT_A01", "ADT_A39", "RDS_O13", "RDE_O11"} <= set(REQUIRED)
    assert REQUIRED["ADT_A01"].segments == ("EVN", "PID", "PV1")
    assert ("PID", 5) in REQUIRED["ADT_A01"].fields


# -- through the gateway: AE / CE before anything is stored, a dead letter ---------------------------
@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    yield gw
    gw.close()


def test_original_mode_gets_ae_with_err_and_a_dead_letter_and_nothing_is_stored(gateway: Gateway) -> None:
    reply = gateway.intake.receive(drop(A04, "PV1"), Origin("test", "structure"))
    assert reply.code == "AE"
    (ack,) = reply.acks
    assert ack_field(ack, "MSA", 1) == "AE"
    assert ack_field(ack, "ERR", 2) == "PV1^1"
    assert ack_field(ack, "ERR", 3).split("^")[:2] == ["100", "Segment sequence error"]
    reply = gateway.intake.receive(edit(er_message(5), "PID", 5, ""), Origin("test", "structure"))
    assert (reply.code, ack_field(reply.acks[0], "ERR", 2), ack_field(reply.acks[0], "ERR", 3)[:3]) == \
        ("AE", "PID^1^5", "101")
    dead = list_deadletters(gateway)
    assert [(d.stage, d.hl7_code) for d in dead] == [("structure", "100"), ("structure", "101")]
    assert dead[0].reason == "required segment PV1 missing at PV1"
    assert gateway.log.read_all(gateway.settings.topic("hl7v2.in")) == []
    assert not gateway.dedupe.seen("URGENCE|CSSS-SOMMETS-HSA", "HSA00000004")  # a corrected resend is new


def test_enhanced_mode_gets_a_commit_error(gateway: Gateway) -> None:
    raw = drop(A04, "PV1").replace(b"|P|2.5.1||||||", b"|P|2.5.1|||AL|NE||", 1)  # MSH-15 AL, MSH-16 NE
    reply = gateway.intake.receive(raw, Origin("test", "structure"))
    assert [ack_field(a, "MSA", 1) for a in reply.acks] == ["CE"]
    assert ack_field(reply.acks[0], "ERR", 2) == "PV1^1"
    assert gateway.log.read_all(gateway.settings.topic("hl7v2.in")) == []


def test_over_a_real_mllp_socket(gateway: Gateway) -> None:
    """The listener answers from the intake: a cut A04 is AE 100 at PV1, a complete one AA, an end
    before its start AA with a warning ERR (severity W) at PV1-45."""
    loop = asyncio.new_event_loop()
    srv = MllpServer(gateway.intake, host="127.0.0.1", port=0)
    loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        late = edit(er_message(7), "PV1", 45, "202512311200")
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(frame(CUT) + frame(er_message(6)) + frame(late))
            reader = FrameReader(sock)
            cut, whole, warned = reader.frame(), reader.frame(), reader.frame()
    finally:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert (ack_field(cut, "MSA", 1), ack_field(cut, "ERR", 2), ack_field(cut, "ERR", 3)[:3]) == ("AE", "PV1^1", "100")
    assert (ack_field(whole, "MSA", 1), b"ERR|" in whole) == ("AA", False)
    assert (ack_field(warned, "MSA", 1), ack_field(warned, "ERR", 2), ack_field(warned, "ERR", 4)) == \
        ("AA", "PV1^1^45", "W")

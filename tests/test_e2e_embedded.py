"""End to end on the embedded defaults: a real `pivot serve` process, real TCP, a client we did not
write (python-hl7's MLLPClient), the FHIR store read over HTTP."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import hl7.client
import httpx

from gateway.eventlog.embedded import EmbeddedLog
from gateway.hl7v2 import parse
from gateway.samples import er_message
from tests.e2e_helpers import FrameReader, ack_field, entries, search, wait_for

NAM_SYSTEM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id"


def _nam(raw: bytes) -> str:
    return parse(raw).first("PID").get(3, 1, rep=2)  # type: ignore[union-attr]


def _visit(raw: bytes) -> str:
    return parse(raw).first("PV1").get(19)  # type: ignore[union-attr]


def test_er_feed_reaches_fhir_store_and_resends_change_nothing(serve_factory: Any) -> None:
    gw = serve_factory().start()
    msgs = [er_message(i) for i in range(12)]
    with hl7.client.MLLPClient("127.0.0.1", gw.mllp_port) as client:
        for raw in msgs:
            ack = client.send(b"\x0b" + raw + b"\x1c\x0d")
            assert ack_field(ack.strip(b"\x0b\x1c\r"), "MSA", 1) == "AA"
            assert ack_field(ack.strip(b"\x0b\x1c\r"), "MSA", 2) == parse(raw).control_id
    raw = msgs[5]
    found = wait_for(lambda: entries(search(gw.base, "Patient", identifier=f"{NAM_SYSTEM}|{_nam(raw)}")))
    assert len(found) == 1
    patient = found[0]
    encounters = wait_for(lambda: entries(search(gw.base, "Encounter", identifier=_visit(raw)), "Encounter"))
    assert len(encounters) == 1
    enc = encounters[0]
    assert enc["class"]["code"] == "EMER"
    assert enc["subject"]["reference"] == f"Patient/{patient['id']}"
    history_before = search(gw.base, f"Encounter/{enc['id']}/_history")
    # the same message again: AA, and nothing changes in the store
    with hl7.client.MLLPClient("127.0.0.1", gw.mllp_port) as client:
        ack = client.send(b"\x0b" + raw + b"\x1c\x0d")
    assert ack_field(ack.strip(b"\x0b\x1c\r"), "MSA", 1) == "AA"
    wait_for(lambda: "pivot_messages_total" in httpx.get(f"{gw.base}/metrics").text)
    history_after = search(gw.base, f"Encounter/{enc['id']}/_history")
    assert len(entries(history_after)) == len(entries(history_before)) == 1


def test_http_post_hl7v2_answers_with_the_ack(serve_factory: Any) -> None:
    gw = serve_factory().start()
    raw = er_message(40)
    resp = httpx.post(f"{gw.base}/hl7v2", content=raw, headers={"Content-Type": "x-application/hl7-v2+er7"})
    assert resp.status_code == 200
    assert ack_field(resp.content, "MSA", 1) == "AA"
    assert ack_field(resp.content, "MSA", 2) == parse(raw).control_id
    wait_for(lambda: entries(search(gw.base, "Encounter", identifier=_visit(raw))))


def test_enhanced_mode_commit_then_application_ack(serve_factory: Any) -> None:
    gw = serve_factory().start()
    raw = er_message(41, ack_modes=("AL", "AL"))
    with socket.create_connection(("127.0.0.1", gw.mllp_port)) as sock:
        sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
        reader = FrameReader(sock)
        first, second = reader.frame(), reader.frame()
    assert ack_field(first, "MSA", 1) == "CA"
    assert ack_field(second, "MSA", 1) == "AA"
    assert ack_field(first, "MSA", 2) == ack_field(second, "MSA", 2) == parse(raw).control_id


def _bad_inputs() -> list[tuple[str, bytes, str, str, str]]:
    """(case, bytes, expected MSA-1, expected MSA-2, expected ERR-3 code prefix or '')."""
    good = er_message(60).decode()
    cid = parse(er_message(60)).control_id
    no_pid = "\r".join(s for s in good.split("\r") if not s.startswith("PID"))
    bad_date = good.replace("|19", "|19501345", 1) if "|19" in good else good
    lines = good.split("\r")
    pid = next(i for i, s in enumerate(lines) if s.startswith("PID"))
    fields = lines[pid].split("|")
    fields[7] = "19501345"
    lines[pid] = "|".join(fields)
    bad_date = "\r".join(lines)
    unknown = good.replace("ADT^A04^ADT_A01", "ORU^R01^ORU_R01", 1)
    wrong_delims = good.replace("|", "#")
    wrong_delims = "MSH#" + wrong_delims[4:].split("\r", 1)[0] + "\r" + good.split("\r", 1)[1]
    big = good.replace("ZPV|1|CIV|", "ZPV|1|CIV|" + "X" * (3 * 1024 * 1024), 1)
    return [
        ("truncated", good[:40].encode(), "AR", "", ""),
        ("garbage", bytes(range(256)) * 4, "AR", "", ""),
        ("no MSH", good.split("\r", 1)[1].encode(), "AR", "", ""),
        ("wrong delimiters", wrong_delims.encode(), "AR", cid, ""),
        ("3 MB", big.encode(), "AR", cid, ""),
        ("unknown type", unknown.encode(), "AR", cid, "20"),
        ("missing PID", no_pid.encode(), "AE", cid, "100"),
        ("impossible date", bad_date.encode(), "AE", cid, "102"),
    ]


def test_bad_input_gets_the_right_ack_and_the_listener_keeps_serving(serve_factory: Any, tmp_path: Path) -> None:
    gw = serve_factory().start()
    cases = _bad_inputs()
    with socket.create_connection(("127.0.0.1", gw.mllp_port)) as sock:
        reader = FrameReader(sock)
        for n, (case, raw, code, msa2, err3) in enumerate(cases):
            sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
            ack = reader.frame()
            assert ack_field(ack, "MSA", 1) == code, case
            assert ack_field(ack, "MSA", 2) == msa2, case
            assert ack_field(ack, "ERR", 3).startswith(err3), case
            assert ack_field(ack, "ERR", 3), f"{case}: ERR-3 missing"
            good = er_message(100 + n)
            sock.sendall(b"\x0b" + good + b"\x1c\x0d")
            assert ack_field(reader.frame(), "MSA", 1) == "AA", f"good message after {case}"
    log = EmbeddedLog(gw.data_dir / "log.sqlite")
    try:
        dead = log.read_all("pivot.deadletter")
    finally:
        log.close()
    kept = [rec.value for rec in dead]
    for case, raw, _code, _msa2, _err in cases:
        if case == "3 MB":
            assert any(raw.startswith(v) and len(v) < len(raw) for v in kept), case
        else:
            assert raw in kept, case
    for rec in dead:
        assert rec.headers["reason"], rec.headers
        assert rec.headers["hl7_code"], rec.headers

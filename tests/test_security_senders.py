"""A sender's site bounds what it writes; anonymous MLLP in token mode; MLLP connection limits
(issue 13, findings 5 and 6).

Units: which assigning authorities a registration owns (defaults, ``authorities``, the
identifier-systems file's ``facilities``), what is always writable (NAM, no authority), and what
cannot pass (a universal id of another site under an owned namespace, MRG-1, PV1-19).
Through ``pivot serve`` (its MLLP listener in its own process): a sender of facility A writing
facility B's authority over HTTP and over mTLS MLLP → AR, ERR-3 204 at PID^1^3, a dead letter, B's
Patient unchanged; the NAM still accepted; anonymous MLLP refused in token mode (the connection
kept), accepted with PIVOT_MLLP_ALLOW_ANONYMOUS; a partial frame cut by a new start block → AR +
dead letter + the next message AA; a trickling connection closed at PIVOT_MLLP_FRAME_TIMEOUT_S;
PIVOT_MLLP_MAX_CONNECTIONS_PER_PEER.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.mllp import frame
from gateway.eventlog.embedded import EmbeddedLog
from gateway.hl7v2 import parse
from gateway.samples import er_message, person
from gateway.security import ForbiddenError, Security
from gateway.settings import Settings
from tests.e2e_helpers import FrameReader, ack_field, wait_for
from tests.security_helpers import Ca, tokens_file, write_json

HSA_FAC, HLA_FAC = "CSSS-SOMMETS-HSA", "CSSS-ARGENTEUIL-HLA"
HSA_TOKEN, HLA_TOKEN, READER = "hsa-token-0123456789", "hla-token-0123456789", "reader-token-0123456789"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


def with_pid3(raw: bytes, pid3: str, *, control_id: str = "", family: str = "") -> bytes:
    """``raw`` with its PID-3 (and MSH-10, PID-5 family name when given) replaced."""
    text = raw.decode("utf-8")
    segments = text.split("\r")
    for n, seg in enumerate(segments):
        fields = seg.split("|")
        if fields[0] == "PID":
            fields[3] = pid3
            if family:
                fields[5] = family + fields[5][fields[5].index("^"):]
        elif fields[0] == "MSH" and control_id:
            fields[9] = control_id
        segments[n] = "|".join(fields)
    return "\r".join(segments).encode("utf-8")


def _security(tmp_path: Path, entry: dict[str, Any], systems: dict[str, Any] | None = None) -> Security:
    tmp_path.mkdir(parents=True, exist_ok=True)
    tokens = tokens_file(tmp_path / "tokens.json", {"t": {"client_id": "site", "scopes": ["system/hl7v2.c"],
                                                          **entry}})
    extra = {"identifier_systems": write_json(tmp_path / "systems.json", systems)} if systems else {}
    return Security(Settings(data_dir=tmp_path / "var", auth="tokens", auth_tokens_file=tokens, **extra))


def _refusal(security: Security, raw: bytes) -> ForbiddenError | None:
    try:
        security.authorize_message("site", parse(raw))
    except ForbiddenError as exc:
        return exc
    return None


# -- which authorities a sender owns -------------------------------------------------------------------
def test_by_default_a_sender_owns_the_authorities_named_like_its_facilities(tmp_path: Path) -> None:
    security = _security(tmp_path, {"facilities": [HSA_FAC]})
    try:
        hsa = er_message(0, site=0)
        assert _refusal(security, hsa) is None  # HSA MRN (CSSS-SOMMETS-HSA → HSA) + the NAM
        error = _refusal(security, with_pid3(hsa, "HLA100000^^^HLA^MR"))  # another site's MRN
        assert error is not None
        assert (error.hl7_code, error.ack_code, str(error.location)) == ("204", "AR", "PID-3")
        assert error.location is not None
        assert error.location.er7() == "PID^1^3"
        assert _refusal(security, with_pid3(hsa, f"{person(0).nam}^^^RAMQ^JHN")) is None  # the NAM alone
        assert _refusal(security, with_pid3(hsa, f"{person(0).nam}^^^HLA^JHN")) is None  # a NAM by its type
        assert _refusal(security, with_pid3(hsa, "X42^^^^MR")) is None  # no authority: the sender's own site
        assert _refusal(security, with_pid3(hsa, "HSA1~HLA2^^^HLA^MR")) is not None  # any repetition
        assert _refusal(security, with_pid3(hsa, "HSA1^^^CSSS-SOMMETS-HSA^MR")) is None  # the facility id itself
        visit = hsa.replace(b"^^^HSA^VN", b"^^^HLA^VN")
        error = _refusal(security, visit)
        assert error is not None
        assert str(error.location) == "PV1-19"  # another site's visit number
    finally:
        security.close()


def test_merges_of_another_sites_records_are_refused(tmp_path: Path) -> None:
    security = _security(tmp_path, {"facilities": [HSA_FAC]})
    try:
        text = er_message(0, site=0, trigger="A40").decode().split("\r")
        pid = next(i for i, seg in enumerate(text) if seg.startswith("PID|"))
        text.insert(pid + 1, "MRG|HLA100099^^^HLA^MR")
        error = _refusal(security, "\r".join(text).encode())
        assert error is not None
        assert error.location is not None
        assert error.location.er7() == "MRG^1^1"
    finally:
        security.close()


def test_a_universal_id_of_another_site_under_an_owned_namespace_is_refused(tmp_path: Path) -> None:
    hla_oid = "2.16.124.10.101.1.60.100"
    security = _security(tmp_path, {"facilities": [HSA_FAC]}, {"HLA": f"urn:oid:{hla_oid}"})
    try:
        hsa = er_message(0, site=0)
        # the namespace says HSA, but the identifier would be written under HLA's system
        assert _refusal(security, with_pid3(hsa, f"HSA7^^^HSA&{hla_oid}&ISO^MR")) is not None
        assert _refusal(security, with_pid3(hsa, f"HLA7^^^&{hla_oid}&ISO^MR")) is not None
    finally:
        security.close()


def test_authorities_from_the_registration_and_the_identifier_systems_file(tmp_path: Path) -> None:
    hsa = er_message(0, site=0)
    hla_mrn = with_pid3(hsa, "HLA100000^^^HLA^MR")
    listed = _security(tmp_path / "a", {"facilities": [HSA_FAC], "authorities": ["HLA"]})
    try:
        assert _refusal(listed, hla_mrn) is None
    finally:
        listed.close()
    # the file assigns HSA to another facility: a name no longer gives it; its facility does
    systems = {"HSA": {"system": "urn:oid:1.2.3.4", "facilities": ["SOMMETS-URG"]},
               "HLA": {"facilities": [HSA_FAC]}}
    assigned = _security(tmp_path / "b", {"facilities": [HSA_FAC]}, systems)
    try:
        assert str(getattr(_refusal(assigned, hsa), "location", "")) == "PID-3"
        assert _refusal(assigned, hla_mrn.replace(b"^^^HSA^VN", b"^^^HLA^VN")) is None
    finally:
        assigned.close()
    anywhere = _security(tmp_path / "c", {"facilities": ["*"]})
    try:
        assert _refusal(anywhere, hla_mrn) is None
    finally:
        anywhere.close()
    with pytest.raises(Exception, match="PIVOT_IDENTIFIER_SYSTEMS"):
        _security(tmp_path / "d", {"facilities": [HSA_FAC]}, {"HSA": {"facilities": "SOMMETS-URG"}})


# -- through pivot serve -------------------------------------------------------------------------------
def _mllp(port: int, raw: bytes, ctx: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        sock = ctx.wrap_socket(plain, server_hostname="localhost") if ctx is not None else plain
        sock.sendall(frame(raw))
        return FrameReader(sock).frame(timeout_s=10)


def _post(base: str, raw: bytes, token: str) -> httpx.Response:
    return httpx.post(f"{base}/hl7v2", content=raw, headers={**ER7, "Authorization": f"Bearer {token}"},
                      timeout=10)


def _patient(base: str, mrn: str) -> dict[str, Any] | None:
    bundle = httpx.get(f"{base}/fhir/Patient", params={"identifier": mrn}, timeout=10,
                       headers={"Authorization": f"Bearer {READER}"}).json()
    found = [e["resource"] for e in bundle.get("entry", [])]
    return found[0] if found else None


def _dead(data_dir: Path) -> list[dict[str, str]]:
    log = EmbeddedLog(data_dir / "log.sqlite")
    try:
        return [{**r.headers, "value": r.value.decode("latin-1")} for r in log.read_all("pivot.deadletter")]
    finally:
        log.close()


def _ack(ack: bytes) -> tuple[str, str, str]:
    """MSA-1, ERR-3.1 and ERR-2 of an ACK."""
    err3 = ack_field(ack, "ERR", 3).split("^")[0]
    return ack_field(ack, "MSA", 1), err3, ack_field(ack, "ERR", 2)


def test_a_sender_cannot_write_another_sites_records_through_pivot_serve(
        serve_factory: Any, tmp_path: Path) -> None:
    ca = Ca(tmp_path / "ca")
    server_cert, server_key = ca.issue("localhost", server=True)
    hsa_cert = ca.issue("hsa-er.sommets.example")
    tokens = tokens_file(tmp_path / "tokens.json", {
        HSA_TOKEN: {"client_id": "site-hsa", "scopes": ["system/hl7v2.c"], "facilities": [HSA_FAC]},
        HLA_TOKEN: {"client_id": "site-hla", "scopes": ["system/hl7v2.c"], "facilities": [HLA_FAC]},
        READER: {"client_id": "reader", "scopes": ["system/Patient.rs"]}})
    clients = write_json(tmp_path / "clients.json", {"clients": [
        {"client_id": "site-hsa", "facilities": [HSA_FAC], "certificate_cns": ["hsa-er.sommets.example"]}]})
    gw = serve_factory(env={"PIVOT_AUTH": "tokens", "PIVOT_AUTH_TOKENS_FILE": str(tokens),
                            "PIVOT_AUTH_CLIENTS_FILE": str(clients), "PIVOT_MLLP_TLS_CERT": str(server_cert),
                            "PIVOT_MLLP_TLS_KEY": str(server_key), "PIVOT_MLLP_TLS_CLIENT_CA": str(ca.cert_path)}
                        ).start()
    anonymous = ssl.create_default_context(cafile=str(ca.cert_path))
    mtls = ssl.create_default_context(cafile=str(ca.cert_path))
    mtls.load_cert_chain(*hsa_cert)

    # facility B (HLA) registers its patient
    assert _post(gw.base, er_message(1, site=1), HLA_TOKEN).headers["x-hl7-ack-code"] == "AA"
    before = wait_for(lambda: _patient(gw.base, "HLA100001"))
    # facility A (HSA) sends B's MRN with another name: over HTTP, and over mTLS MLLP
    hijack = with_pid3(er_message(5, site=0), "HLA100001^^^HLA^MR", control_id="HIJACK-HTTP", family="Pirate")
    resp = _post(gw.base, hijack, HSA_TOKEN)
    assert resp.headers["x-hl7-ack-code"] == "AR"
    assert _ack(resp.content) == ("AR", "204", "PID^1^3")
    hijack = with_pid3(er_message(6, site=0), "HLA100001^^^HLA^MR", control_id="HIJACK-MLLP", family="Pirate")
    assert _ack(_mllp(gw.mllp_port, hijack, mtls)) == ("AR", "204", "PID^1^3")
    # its own patient goes through (and, stored after the refusals, shows they wrote nothing)
    assert _ack(_mllp(gw.mllp_port, er_message(2, site=0), mtls))[0] == "AA"
    wait_for(lambda: _patient(gw.base, "HSA100002"))
    after = _patient(gw.base, "HLA100001")
    assert after is not None
    assert after["name"] == before["name"]
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert "Pirate" not in str(after)
    # the NAM is everyone's: A's registration of the same person (its MRN + the NAM) is accepted
    assert _post(gw.base, er_message(1, site=0), HSA_TOKEN).headers["x-hl7-ack-code"] == "AA"

    # anonymous MLLP (TLS without a client certificate) in token mode: AR, the connection kept
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as plain, \
            anonymous.wrap_socket(plain, server_hostname="localhost") as sock:
        reader = FrameReader(sock)  # type: ignore[arg-type]
        for i in (3, 4):
            sock.sendall(frame(er_message(i, site=0)))
            assert _ack(reader.frame(timeout_s=10))[:2] == ("AR", "207")

    dead = _dead(gw.data_dir)
    forbidden = [(d["msh10"], d["hl7_code"], d["transport"]) for d in dead if d["stage"] == "forbidden"]
    assert ("HIJACK-HTTP", "204", "http") in forbidden
    assert ("HIJACK-MLLP", "204", "mllp") in forbidden
    assert sum(1 for _, code, transport in forbidden if (code, transport) == ("207", "mllp")) == 2
    assert all("PID-3" in d["reason"] for d in dead if d["hl7_code"] == "204")
    assert "Pirate" not in gw.logs()


def test_mllp_connections_through_pivot_serve(serve_factory: Any, tmp_path: Path) -> None:
    tokens = tokens_file(tmp_path / "tokens.json", {READER: {"client_id": "reader", "scopes": ["system/Patient.rs"]}})
    gw = serve_factory(env={"PIVOT_AUTH": "tokens", "PIVOT_AUTH_TOKENS_FILE": str(tokens),
                            "PIVOT_MLLP_ALLOW_ANONYMOUS": "true", "PIVOT_MLLP_FRAME_TIMEOUT_S": "1",
                            "PIVOT_MLLP_IDLE_TIMEOUT_S": "30", "PIVOT_MLLP_MAX_CONNECTIONS_PER_PEER": "3"}).start()
    # anonymous MLLP accepted on a trusted network
    assert _ack(_mllp(gw.mllp_port, er_message(1)))[0] == "AA"

    # a partial frame cut by a new start block: AR for it, a dead letter, then the next message AA
    partial = er_message(2)[:400]
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as sock:
        sock.sendall(b"\x0b" + partial + frame(er_message(3)))
        reader = FrameReader(sock)
        first, second = reader.frame(timeout_s=10), reader.frame(timeout_s=10)
    assert _ack(first)[0] == "AR"
    assert ack_field(first, "MSA", 2) == parse(er_message(2)).control_id
    assert "incomplete" in ack_field(first, "ERR", 8)
    assert ack_field(second, "MSA", 1) == "AA"
    assert ack_field(second, "MSA", 2) == parse(er_message(3)).control_id
    kept = [d for d in _dead(gw.data_dir) if d["msh10"] == parse(er_message(2)).control_id]
    assert [d["stage"] for d in kept] == ["receive"]
    assert kept[0]["value"].encode("latin-1") == partial

    # a connection trickling a byte every 0.2 s is closed at the 1 s frame deadline
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as sock:
        sock.sendall(b"\x0b" + er_message(4)[:50])
        started, closed = time.monotonic(), None
        sock.settimeout(0.2)
        while closed is None and time.monotonic() - started < 8:
            try:
                if sock.recv(100) == b"":
                    closed = time.monotonic() - started
            except TimeoutError:
                pass
            except ConnectionError:
                closed = time.monotonic() - started
            if closed is None:
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed = time.monotonic() - started
    assert closed is not None, "the trickling connection was never closed"
    assert closed < 4

    # at most 3 connections from one address (busy with messages: none gives its slot up)
    held = [socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) for _ in range(3)]
    try:
        for n, sock in enumerate(held):
            assert _ack(_exchange_on(sock, er_message(10 + n)))[0] == "AA"
        with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=5) as over:
            over.settimeout(5)
            with contextlib.suppress(ConnectionError):
                assert over.recv(100) == b""
        assert _ack(_exchange_on(held[0], er_message(5)))[0] == "AA"
    finally:
        for sock in held:
            sock.close()


def _exchange_on(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(frame(raw))
    return FrameReader(sock).frame(timeout_s=10)


def test_anonymous_mllp_is_accepted_when_authentication_is_off(tmp_path: Path) -> None:
    from connectors.base import Origin

    msg = parse(er_message(1))
    open_ = Security(Settings(data_dir=tmp_path / "a"))
    tokens = tokens_file(tmp_path / "t.json", {})
    closed = Security(Settings(data_dir=tmp_path / "b", auth="tokens", auth_tokens_file=tokens))
    try:
        open_.authorize_sender(Origin("mllp", "127.0.0.1:1"), msg)
        closed.authorize_sender(Origin("file", "a.hl7#1"), msg)  # the operator's own ingest
        with pytest.raises(ForbiddenError, match="anonymous MLLP"):
            closed.authorize_sender(Origin("mllp", "127.0.0.1:1"), msg)
    finally:
        open_.close()
        closed.close()


def test_start_up_warns_when_mllp_senders_cannot_authenticate(tmp_path: Path) -> None:
    from gateway.security import check_startup

    tokens = tokens_file(tmp_path / "t.json", {})
    plain = check_startup(Settings(data_dir=tmp_path, auth="tokens", auth_tokens_file=tokens))
    assert any("every MLLP message gets AR" in w for w in plain)
    allowed = check_startup(Settings(data_dir=tmp_path, auth="tokens", auth_tokens_file=tokens,
                                     mllp_allow_anonymous=True))
    assert any("PIVOT_MLLP_ALLOW_ANONYMOUS=true" in w for w in allowed)
    assert not any("MLLP" in w for w in check_startup(Settings(data_dir=tmp_path)))

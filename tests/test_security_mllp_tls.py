"""MLLP over TLS and mutual TLS with real Python ``ssl`` clients: certificate CN → sender identity.

Refusals: a client without a certificate, with a certificate from another CA, or speaking plain
TCP to the TLS port never reaches the intake.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Origin, Reply
from connectors.mllp import MllpServer, frame
from gateway.errors import GatewayError
from gateway.hl7v2.ack import build_ack
from gateway.hl7v2.tokenizer import parse
from gateway.samples import er_message
from gateway.security import Security
from gateway.settings import Settings
from tests.e2e_helpers import FrameReader
from tests.security_helpers import Ca, write_json


class AuthorizingReceiver:
    """The intake's allow-list step alone: AR (207) when the identity may not send, else AA."""

    def __init__(self, security: Security) -> None:
        self.security = security
        self.origins: list[Origin] = []

    def receive(self, raw: bytes, origin: Origin) -> Reply:
        self.origins.append(origin)
        msg = parse(raw)
        try:
            self.security.authorize_message(origin.identity, msg)
        except GatewayError as exc:
            return Reply(code="AR", acks=[build_ack("AR", msg=msg, error=exc)], control_id=msg.control_id)
        return Reply(code="AA", acks=[build_ack("AA", msg=msg)], control_id=msg.control_id)

    def refuse(self, head: bytes, error: GatewayError, origin: Origin) -> Reply:
        return Reply(code="AR", acks=[build_ack("AR", msg=None, raw=head, error=error)])


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = Ca(tmp_path / "ca")
    rogue = Ca(tmp_path / "rogue", "Rogue CA")
    return {"ca": ca, "server": ca.issue("localhost", server=True), "hsa": ca.issue("hsa-er.sommets.example"),
            "unmapped": ca.issue("someone.example"), "rogue": rogue.issue("hsa-er.sommets.example"),
            "dir": tmp_path}


def _serve(pki: dict[str, Any], require: bool) -> Callable[[], Iterator[tuple[MllpServer, AuthorizingReceiver]]]:
    def run() -> Iterator[tuple[MllpServer, AuthorizingReceiver]]:
        tmp: Path = pki["dir"]
        clients = write_json(tmp / "clients.json", {"clients": [
            {"client_id": "site-hsa", "facilities": ["CSSS-SOMMETS-HSA"], "messages": ["adt"],
             "certificate_cns": ["hsa-er.sommets.example"]}]})
        cert, key = pki["server"]
        settings = Settings(data_dir=tmp / "var", auth_clients_file=clients, mllp_tls_cert=cert, mllp_tls_key=key,
                            mllp_tls_client_ca=pki["ca"].cert_path, mllp_tls_require_client_cert=require)
        security = Security(settings)
        receiver = AuthorizingReceiver(security)
        loop = asyncio.new_event_loop()
        srv = MllpServer(receiver, host="127.0.0.1", port=0, idle_timeout_s=5.0, ssl_context=security.mllp_ssl,
                         identify=security.certificate_identity, handshake_timeout_s=3.0)
        loop.run_until_complete(srv.start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield srv, receiver
        finally:
            asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
            security.close()

    return run


@pytest.fixture
def mtls(pki: dict[str, Any]) -> Iterator[tuple[MllpServer, AuthorizingReceiver]]:
    yield from _serve(pki, require=True)()


@pytest.fixture
def tls(pki: dict[str, Any]) -> Iterator[tuple[MllpServer, AuthorizingReceiver]]:
    yield from _serve(pki, require=False)()


def _client_ctx(pki: dict[str, Any], cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def _exchange(port: int, ctx: ssl.SSLContext, message: bytes) -> str:
    """Send one message over TLS; the MSA-1 code of the ACK."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(frame(message))
        ack = FrameReader(sock).frame()  # type: ignore[arg-type]
    msa = parse(ack).first("MSA")
    assert msa is not None
    return msa.get(1)


def _refused(port: int, ctx: ssl.SSLContext, message: bytes) -> None:
    """The handshake (or the first read after it, in TLS 1.3) fails: no ACK ever comes."""
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(frame(message))
            answer = sock.recv(65536)
    except (ssl.SSLError, OSError):
        return
    assert answer == b"", "a client without a trusted certificate got an answer"


def test_mtls_maps_the_certificate_to_the_sender_and_its_allow_list(
        mtls: tuple[MllpServer, AuthorizingReceiver], pki: dict[str, Any]) -> None:
    srv, receiver = mtls
    hsa = _client_ctx(pki, pki["hsa"])
    assert _exchange(srv.port, hsa, er_message(0, site=0)) == "AA"  # HSA facility: allowed
    assert receiver.origins[-1].identity == "site-hsa"
    assert _exchange(srv.port, hsa, er_message(1, site=1)) == "AR"  # HLA facility: not its own
    assert _exchange(srv.port, _client_ctx(pki, pki["unmapped"]), er_message(2, site=0)) == "AR"
    assert receiver.origins[-1].identity == "cn:someone.example"


def test_mtls_refuses_clients_without_a_trusted_certificate(
        mtls: tuple[MllpServer, AuthorizingReceiver], pki: dict[str, Any]) -> None:
    srv, receiver = mtls
    _refused(srv.port, _client_ctx(pki, None), er_message(3, site=0))
    _refused(srv.port, _client_ctx(pki, pki["rogue"]), er_message(4, site=0))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as plain:  # plain TCP to the TLS port
        plain.sendall(frame(er_message(5, site=0)))
        with contextlib.suppress(ConnectionError, TimeoutError):
            assert not plain.recv(65536).startswith(b"\x0b")
    assert receiver.origins == []


def test_tls_without_client_certificates_is_anonymous(
        tls: tuple[MllpServer, AuthorizingReceiver], pki: dict[str, Any]) -> None:
    srv, receiver = tls
    assert _exchange(srv.port, _client_ctx(pki, None), er_message(6, site=1)) == "AA"
    assert receiver.origins[-1].identity == ""
    assert _exchange(srv.port, _client_ctx(pki, pki["hsa"]), er_message(7, site=0)) == "AA"
    assert receiver.origins[-1].identity == "site-hsa"

"""The FHIR client's seams: retries (429 Retry-After, 503, a reply lost after commit, stop), bearer and
SMART Backend Services auth, TLS (CA bundle, client certificate). Faults are injected by a small
proxy in front of the real sekmet; auth and TLS run against sekmet configured for them. The JWT
client assertion is checked claim by claim against a tiny token endpoint (httpx MockTransport).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.delivery import DeliveryStopped, FhirClient, client_from_settings, message_bundle
from gateway.delivery.auth import ASSERTION_TYPE, SmartBackendAuth
from gateway.delivery.sink import DeliverySink
from gateway.envelope import fhir_envelope, now_iso
from gateway.eventlog.base import OutRecord
from gateway.eventlog.embedded import EmbeddedLog
from gateway.metrics import Metrics
from gateway.settings import load_settings
from tests.fhir_server_fixtures import (  # noqa: F401 (fixtures)
    SekmetServer,
    sample_resources,
    sekmet_factory_fixture,
    sekmet_server_fixture,
)

BUNDLE = message_bundle(sample_resources(1), sender="S", control_id="C1")


# -- a fault-injecting proxy in front of sekmet ---------------------------------------------------
class FaultProxy:
    """Forwards to ``upstream``; ``faults`` (popped in order) answer instead: (status, headers) or "drop"
    (forward, then close the connection without answering: a reply lost after the server committed)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[tuple[int, dict[str, str]] | str] = []
        self.always: int | None = None
        self.seen: list[tuple[float, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    fault = proxy.faults.pop(0) if proxy.faults else None
                    if fault is None and proxy.always is not None:
                        fault = (proxy.always, {})
                path = self.path.split("/fhir", 1)[-1]
                if isinstance(fault, tuple):
                    proxy.seen.append((time.monotonic(), self.command, fault[0]))
                    self.send_response(fault[0])
                    for k, v in fault[1].items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = httpx.request(self.command, proxy.upstream + path, content=body, headers=headers, timeout=30)
                proxy.seen.append((time.monotonic(), self.command, resp.status_code))
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(resp.status_code)
                for k in ("Content-Type", "ETag", "Location"):
                    if k in resp.headers:
                        self.send_header(k, resp.headers[k])
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = do_PUT = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(sekmet_server: SekmetServer) -> Iterator[FaultProxy]:
    p = FaultProxy(sekmet_server.base_url)
    yield p
    p.close()


def test_429_retry_after_and_503_are_retried(proxy: FaultProxy, sekmet_server: SekmetServer) -> None:
    when = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3), usegmt=True)
    proxy.faults = [(429, {"Retry-After": "1"}), (503, {"Retry-After": when}), (503, {}), (500, {})]
    client = FhirClient(proxy.base_url, retry_max_s=3.0)
    result = client.deliver(BUNDLE)
    assert result.created == 6
    assert result.attempts == 5
    assert client.retries == 4
    times = [t for t, _m, _s in proxy.seen]
    assert times[1] - times[0] >= 0.95  # Retry-After: 1 honoured
    assert times[2] - times[1] >= 0.9  # Retry-After as an HTTP-date (second resolution)
    assert sekmet_server.count("Patient") == 1
    proxy.faults = [(429, {"Retry-After": "3600"})]  # capped by PIVOT_FHIR_RETRY_MAX_S
    client.retry_max_s = 0.3
    started = time.monotonic()
    assert client.deliver(BUNDLE).unchanged == 6
    assert time.monotonic() - started < 2.0
    client.close()


def test_reply_lost_after_commit_is_not_written_twice(proxy: FaultProxy, sekmet_server: SekmetServer) -> None:
    client = FhirClient(proxy.base_url, retry_max_s=0.2)
    seeded = sekmet_server.history_total()
    proxy.faults = ["forward", "drop"]  # pre-read passes; the transaction commits, its answer is lost
    result = client.deliver(BUNDLE)
    assert result.attempts == 2
    assert result.unchanged == 6
    assert sekmet_server.history_total() == seeded + 6
    client.close()


def test_4xx_is_refused_with_status_and_outcome(sekmet_server: SekmetServer) -> None:
    from gateway.delivery import FhirRefused

    bad = sample_resources(2)
    bad[3]["status"] = {"not": "a code"}
    client = FhirClient(sekmet_server.base_url)
    with pytest.raises(FhirRefused) as info:
        client.deliver(message_bundle(bad, sender="S", control_id="C2"))
    assert info.value.status == 400
    assert info.value.issue_codes[0] == "structure"
    assert info.value.outcome["resourceType"] == "OperationOutcome"
    assert "Encounter.status" in info.value.describe()
    client.close()


def test_outage_retried_until_stop_then_nothing_committed(tmp_path: Path, proxy: FaultProxy,
                                                          sekmet_server: SekmetServer) -> None:
    settings = load_settings(data_dir=tmp_path, fhir_base_url=proxy.base_url, fhir_retry_max_s=0.2)
    log = EmbeddedLog(tmp_path / "log.sqlite")
    log.append(OutRecord(topic=settings.topic("fhir.Bundle"), key=b"p", headers={"msh10": "C1", "sender": "S"},
                         value=fhir_envelope(BUNDLE, site="HSA", control_id="C1", sender="S", received_at=now_iso())))
    proxy.always = 503
    sink = DeliverySink(settings, log, Metrics(), client_from_settings(settings))
    sink.start()
    time.sleep(1.0)
    sink.stop()
    sink.join(5)
    assert not sink.is_alive()
    assert sink.processed == 0
    assert sink.client.retries >= 3
    assert log.read_all(settings.topic("deadletter")) == []
    proxy.always = None  # the server is back: a new sink delivers the uncommitted record
    again = DeliverySink(settings, log, Metrics(), client_from_settings(settings))
    again.start()
    deadline = time.monotonic() + 30
    while again.processed < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    again.stop()
    again.join(5)
    assert again.delivered == 1
    assert sekmet_server.count("Patient") == 1
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(DeliveryStopped):
        FhirClient(proxy.base_url).deliver(BUNDLE, stop=stopped)
    log.close()


# -- auth --------------------------------------------------------------------------------------
def _keys(tmp: Path, kind: str) -> tuple[Path, Path]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1()))
    priv, pub = tmp / f"{kind}.pem", tmp / f"{kind}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def test_bearer_token_from_setting_and_from_file(tmp_path: Path, sekmet_factory: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    srv: SekmetServer = sekmet_factory(server_auth={"types": ["bearer"], "tokens": ["tok-A-s3cret", "tok-B-s3cret"]})
    srv.headers = {"Authorization": "Bearer tok-A-s3cret"}
    client = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=srv.base_url, fhir_auth="bearer",
                                                fhir_token="tok-A-s3cret"))
    assert client.deliver(BUNDLE).created == 6
    token_file = tmp_path / "token"
    token_file.write_text("tok-wrong\n")
    from_file = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=srv.base_url,
                                                   fhir_auth="bearer", fhir_token_file=token_file,
                                                   fhir_retry_max_s=0.2))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(DeliveryStopped):  # 401 is retried (credentials), never a dead letter
        from_file.deliver(BUNDLE, stop=stop)
    token_file.write_text("tok-B-s3cret\n")  # rotated: picked up without a restart
    assert from_file.deliver(BUNDLE).unchanged == 6
    assert "HTTP 401" in caplog.text
    assert "s3cret" not in caplog.text
    assert "tok-wrong" not in caplog.text
    client.close()
    from_file.close()


def test_smart_backend_services_against_sekmet(tmp_path: Path, sekmet_factory: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rsa_key, rsa_pub = _keys(tmp_path, "rsa")
    ec_key, ec_pub = _keys(tmp_path, "ec")
    srv: SekmetServer = sekmet_factory(server_auth={
        "types": ["smart", "bearer"], "tokens": ["inspect"], "token_lifetime": 2,
        "smart_clients": [{"client_id": "pivot-rsa", "public_key_path": str(rsa_pub), "scopes": "system/*.*"},
                          {"client_id": "pivot-ec", "public_key_path": str(ec_pub), "scopes": "system/*.*"}]})
    srv.headers = {"Authorization": "Bearer inspect"}
    for i, (cid, key) in enumerate((("pivot-rsa", rsa_key), ("pivot-ec", ec_key))):
        settings = load_settings(data_dir=tmp_path, fhir_base_url=srv.base_url, fhir_auth="smart",
                                 fhir_client_id=cid, fhir_private_key_file=key, fhir_retry_max_s=0.5,
                                 fhir_token_url="" if i == 0 else srv.token_url)  # discovery, then explicit
        client = client_from_settings(settings)
        auth = client._http.auth
        assert isinstance(auth, SmartBackendAuth)
        assert auth.alg == ("RS384", "ES384")[i]
        bundle = message_bundle(sample_resources(10 + i), sender="S", control_id=f"C{i}")
        assert client.deliver(bundle).created == 6
        assert client.deliver(bundle).unchanged == 6
        assert auth.fetched == 1
        auth._token = "garbage"  # the server answers 401: one new token, then the request again
        assert client.deliver(bundle).unchanged == 6
        assert auth.fetched == 2
        time.sleep(2.1)  # token_lifetime 2 s: renewed before use
        assert client.deliver(bundle).unchanged == 6
        assert auth.fetched == 3
        client.close()
    assert srv.count("Patient") == 2
    wrong = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=srv.base_url, fhir_auth="smart",
                                               fhir_client_id="unknown", fhir_private_key_file=rsa_key,
                                               fhir_retry_max_s=0.2))
    stop = threading.Event()
    threading.Timer(0.6, stop.set).start()
    with pytest.raises(DeliveryStopped):
        wrong.deliver(BUNDLE, stop=stop)
    assert "token endpoint answered HTTP 401 (invalid_client)" in caplog.text
    pem_body = rsa_key.read_text().splitlines()[1]
    assert "eyJ" not in caplog.text
    assert pem_body not in caplog.text
    wrong.close()


def test_client_assertion_claims(tmp_path: Path) -> None:
    key, pub = _keys(tmp_path, "rsa")
    public = serialization.load_pem_public_key(pub.read_bytes())
    token_url = "https://auth.example.org/token"
    seen: list[dict[str, Any]] = []
    calls = {"fhir": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url == token_url:
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            assert form["grant_type"] == "client_credentials"
            assert form["client_assertion_type"] == ASSERTION_TYPE
            assert form["scope"] == "system/*.write"
            header = jwt.get_unverified_header(form["client_assertion"])
            claims = jwt.decode(form["client_assertion"], public, algorithms=["RS384"], audience=token_url)  # type: ignore[arg-type]
            seen.append({"header": header, **claims})
            return httpx.Response(200, json={"access_token": f"at-{len(seen)}", "token_type": "bearer",
                                             "expires_in": 3600})
        calls["fhir"] += 1
        if request.headers["Authorization"] == "Bearer at-1" and calls["fhir"] == 2:
            return httpx.Response(401)  # revoked: fetch a new token once
        assert request.headers["Authorization"].startswith("Bearer at-")
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "batch-response", "entry": []})

    auth = SmartBackendAuth(base_url="https://fhir.example.org/r4", client_id="pivot", key_file=key,
                            scope="system/*.write", token_url=token_url)
    client = FhirClient("https://fhir.example.org/r4", auth=auth, transport=httpx.MockTransport(handler))
    for _ in range(3):
        client.transaction({"resourceType": "Bundle", "type": "batch", "entry": []})
    assert len(seen) == 2
    assert auth.fetched == 2
    now = time.time()
    for claims in seen:
        assert claims["iss"] == claims["sub"] == "pivot"
        assert claims["aud"] == token_url
        assert now < claims["exp"] <= now + 300
        assert claims["header"]["alg"] == "RS384"
        assert claims["header"]["kid"] == auth.kid
    assert seen[0]["jti"] != seen[1]["jti"]
    client.close()


# -- TLS -------------------------------------------------------------------------------------------
def _pki(tmp: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, all as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: Any, issuer: x509.Name, signer: Any, *, ca: bool = False,
             san: bool = False) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    out: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pivot test CA")])
    ca = cert("Pivot test CA", ca_key, ca_name, ca_key, ca=True)
    for name, key, crt in (("ca", ca_key, ca),
                           ("server", k := ec.generate_private_key(ec.SECP256R1()),
                            cert("127.0.0.1", k, ca_name, ca_key, san=True)),
                           ("client", c := ec.generate_private_key(ec.SECP256R1()),
                            cert("pivot-client", c, ca_name, ca_key))):
        out[name] = tmp / f"{name}.crt"
        out[name].write_bytes(crt.public_bytes(serialization.Encoding.PEM))
        out[f"{name}_key"] = tmp / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return out


def test_tls_with_a_private_ca_against_sekmet(tmp_path: Path, sekmet_factory: Any) -> None:
    pki = _pki(tmp_path)
    srv: SekmetServer = sekmet_factory(tls=(pki["server"], pki["server_key"], pki["ca"]))
    assert srv.base_url.startswith("https://")
    trusted = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=srv.base_url,
                                                 fhir_ca_bundle=pki["ca"]))
    assert trusted.capabilities_problems() == []
    assert trusted.deliver(BUNDLE).created == 6
    untrusted = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=srv.base_url,
                                                   fhir_retry_max_s=0.2))
    assert untrusted.capabilities_problems() != []
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(DeliveryStopped):  # an unverifiable server is never talked to
        untrusted.deliver(BUNDLE, stop=stop)
    trusted.close()
    untrusted.close()


def test_client_certificate_for_mutual_tls(tmp_path: Path) -> None:
    pki = _pki(tmp_path)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            body = json.dumps({"resourceType": "Bundle", "type": "batch-response", "entry": [],
                               "id": dict(x[0] for x in peer["subject"])["commonName"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"], pki["server_key"])
    ctx.load_verify_locations(pki["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.handle_error = lambda *a: None  # type: ignore[method-assign]  # refused handshakes are expected
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"https://127.0.0.1:{httpd.server_address[1]}/fhir"
    try:
        with_cert = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=base,
                                                       fhir_ca_bundle=pki["ca"], fhir_client_cert=pki["client"],
                                                       fhir_client_key=pki["client_key"]))
        reply = with_cert.transaction({"resourceType": "Bundle", "type": "batch", "entry": []})
        assert reply["id"] == "pivot-client"
        without = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=base,
                                                     fhir_ca_bundle=pki["ca"], fhir_retry_max_s=0.2))
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        with pytest.raises(DeliveryStopped):
            without.transaction({"resourceType": "Bundle", "type": "batch", "entry": []}, stop=stop)
        with_cert.close()
        without.close()
    finally:
        httpd.shutdown()
        httpd.server_close()

"""HTTP authentication and authorisation (FastAPI TestClient on the FHIR router + the guard).

Static tokens, SMART Backend Services through our own token endpoint, external issuers' JWTs
(JWKS served by an httpx MockTransport), SMART v2 scopes per FHIR interaction, bundles, the
Défi Santé operation scope, /metrics, start-up refusal, and the per-sender allow-list.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

from gateway.errors import ConfigError
from gateway.fhirstore import FhirStore
from gateway.hl7v2.tokenizer import parse
from gateway.http import install_fhir_error_handler, make_fhir_router
from gateway.samples import er_message
from gateway.security import ForbiddenError, Security, check_startup, install_security
from gateway.security.access import Access, bundle_accesses, classify
from gateway.security.scopes import narrow, parse_scopes, permits
from gateway.security.verify import Authenticator, Issuer, Unauthorized
from gateway.settings import Settings
from tests.security_helpers import assertion, ec_key, public_jwk, rsa_key, tokens_file, write_json

READER = "reader-token-0123456789"
PHARMACY = "pharmacy-token-0123456789"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female"}
CAREPLAN = {"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"}}


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "var", **extra)


def _app(security: Security, store: FhirStore) -> FastAPI:
    app = FastAPI()

    @app.post("/fhir/Patient/{rid}/$defi-sante-enroll")
    def enroll(rid: str) -> dict[str, str]:
        return {"resourceType": "OperationOutcome", "id": rid}

    app.include_router(make_fhir_router(lambda: store), prefix="/fhir")
    install_fhir_error_handler(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return "pivot_up 1\n"

    install_security(app, security)
    return app


@pytest.fixture
def client_key() -> Any:
    return rsa_key()


@pytest.fixture
def secured(tmp_path: Path, client_key: Any) -> Iterator[tuple[TestClient, Security]]:
    tokens = tokens_file(tmp_path / "tokens.json", {
        READER: {"client_id": "clsc-reader", "scopes": ["system/Patient.rs", "system/CarePlan.r"]},
        PHARMACY: {"client_id": "pharm-12", "scopes": ["system/hl7v2.c"], "facilities": ["PHX12"],
                   "messages": ["pharmacy"]},
    })
    clients = write_json(tmp_path / "clients.json", {"clients": [
        {"client_id": "ehr-gmf", "scopes": ["system/*.rs", "system/metrics.r"],
         "jwks": {"keys": [public_jwk(client_key, "k1", "RS384")]}},
        {"client_id": "case-mgr", "scopes": ["system/Patient.rs", "system/defi-sante.write"],
         "jwks": {"keys": [public_jwk(client_key, "k1", "RS384")]}},
    ]})
    settings = _settings(tmp_path, auth="tokens,smart", auth_tokens_file=tokens, auth_clients_file=clients,
                         auth_token_url="http://testserver/auth/token")
    settings.data_dir.mkdir(parents=True)
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    store.upsert_many([PATIENT, CAREPLAN])
    security = Security(settings)
    with TestClient(_app(security, store), raise_server_exceptions=False) as tc:
        yield tc, security
    security.close()
    store.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(tc: TestClient, key: Any, client_id: str, scope: str, **kw: Any) -> httpx.Response:
    form = {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(key, client_id, "http://testserver/auth/token", **kw)}
    return tc.post("/auth/token", data=form)


# -- scopes and routes -------------------------------------------------------------------------------
def test_smart_v2_scopes() -> None:
    scopes = parse_scopes("system/Patient.rs system/CarePlan.cruds launch openid system/Obs.rs?x=1 user/*.rs")
    assert permits(scopes, "Patient", "read")
    assert permits(scopes, "Patient", "search")
    assert not permits(scopes, "Patient", "update")
    assert all(permits(scopes, "CarePlan", i) for i in ("create", "read", "update", "delete", "search"))
    assert not permits(scopes, "Encounter", "read")
    wildcard = parse_scopes("system/*.rs")
    assert permits(wildcard, "Encounter", "search")
    assert not permits(wildcard, "hl7v2", "c")
    assert permits(parse_scopes("system/*.read"), "Flag", "s")
    assert permits(parse_scopes("system/defi-sante.write"), "defi-sante", "c")
    assert parse_scopes("system/Patient.sr") == ()  # v2 letters must be in c r u d s order
    assert narrow("system/Patient.rs system/Encounter.rs system/*.cruds", ("system/*.rs",)) == [
        "system/Patient.rs", "system/Encounter.rs"]


def test_routes_map_to_resource_and_interaction() -> None:
    assert classify("GET", "/healthz").open
    assert classify("GET", "/fhir/metadata").open
    assert classify("GET", "/fhir/Patient/p1").accesses == (Access("Patient", "r"),)
    assert classify("GET", "/fhir/Patient").accesses == (Access("Patient", "s"),)
    assert classify("POST", "/fhir/CarePlan/_search").accesses == (Access("CarePlan", "s"),)
    assert classify("GET", "/fhir/Patient/p1/_history/2").accesses == (Access("Patient", "r"),)
    assert classify("PUT", "/fhir/CarePlan/cp1").accesses == (Access("CarePlan", "u"),)
    assert classify("DELETE", "/fhir/CarePlan/cp1").accesses == (Access("CarePlan", "d"),)
    assert classify("POST", "/fhir/CarePlan").accesses == (Access("CarePlan", "c"),)
    assert classify("POST", "/hl7v2").accesses == (Access("hl7v2", "c"),)
    assert classify("POST", "/fhir/Patient/p1/$defi-sante-disenroll").accesses == (Access("defi-sante", "c"),)
    assert classify("GET", "/console/unknown").accesses == (Access("*", "cruds"),)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient/p1"}}, {"request": {"method": "GET", "url": "Flag?x=1"}}]}
    assert bundle_accesses(json.dumps(bundle).encode()) == (Access("Patient", "u"), Access("Flag", "s"))
    assert bundle_accesses(b"not json") == (Access("*", "cruds"),)


# -- the guard ---------------------------------------------------------------------------------------
def test_no_token_401_wrong_scope_403_right_scope_200(secured: tuple[TestClient, Security]) -> None:
    tc, _ = secured
    assert tc.get("/healthz").status_code == 200
    assert tc.get("/fhir/metadata").status_code == 200
    r = tc.get("/fhir/Patient/p1")
    assert r.status_code == 401
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = tc.get("/fhir/Patient/p1", headers=_bearer("not-a-known-token"))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = tc.get("/fhir/Patient/p1", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert r.status_code == 401
    assert tc.get("/fhir/Patient/p1", headers=_bearer(READER)).json()["id"] == "p1"  # static token
    assert tc.get("/fhir/Patient", headers=_bearer(READER)).status_code == 200
    r = tc.get("/fhir/CarePlan", headers=_bearer(READER))  # CarePlan.r, not .s
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert "system/CarePlan.s" in r.json()["issue"][0]["diagnostics"]
    assert tc.get("/fhir/CarePlan/cp1", headers=_bearer(READER)).status_code == 200
    assert tc.put("/fhir/Patient/p1", json=PATIENT, headers=_bearer(READER)).status_code == 403
    assert tc.get("/metrics", headers=_bearer(READER)).status_code == 403
    assert tc.get("/metrics").status_code == 401


def test_bundle_entries_need_their_scopes(secured: tuple[TestClient, Security]) -> None:
    tc, _ = secured
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/p1"}}]}
    r = tc.post("/fhir", json=bundle, headers=_bearer(READER))
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"].startswith("200")
    bundle["entry"].append({"request": {"method": "DELETE", "url": "Patient/p1"}})
    assert tc.post("/fhir", json=bundle, headers=_bearer(READER)).status_code == 403


def test_token_endpoint_client_assertion_gives_a_working_jwt(secured: tuple[TestClient, Security],
                                                            client_key: Any) -> None:
    tc, _ = secured
    conf = tc.get("/fhir/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == "http://testserver/auth/token"
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    r = _token(tc, client_key, "ehr-gmf", "system/*.rs system/Patient.cruds system/metrics.r")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "system/*.rs system/metrics.r"  # narrowed to the registration
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert r.headers["cache-control"] == "no-store"
    token = body["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "ES384"
    assert tc.get("/fhir/CarePlan", headers=_bearer(token)).status_code == 200
    assert tc.get("/metrics", headers=_bearer(token)).status_code == 200
    assert tc.delete("/fhir/CarePlan/cp1", headers=_bearer(token)).status_code == 403
    jwks = tc.get("/auth/jwks").json()
    claims = jwt.decode(token, jwt.PyJWK(jwks["keys"][0]).key, algorithms=["ES384"], audience="urn:pivot:api")
    assert claims["client_id"] == "ehr-gmf"


def test_token_endpoint_refusals(secured: tuple[TestClient, Security], client_key: Any) -> None:
    tc, _ = secured
    assert _token(tc, rsa_key(), "ehr-gmf", "system/*.rs").json()["error"] == "invalid_client"  # wrong key
    assert _token(tc, client_key, "nobody", "system/*.rs").status_code == 401
    assert _token(tc, client_key, "ehr-gmf", "system/*.rs", lifetime=3600).status_code == 401
    assert _token(tc, client_key, "ehr-gmf", "system/CarePlan.d").json()["error"] == "invalid_scope"
    once = _token(tc, client_key, "ehr-gmf", "system/*.rs", jti="same")
    assert once.status_code == 200
    assert _token(tc, client_key, "ehr-gmf", "system/*.rs", jti="same").status_code == 401  # replay
    r = tc.post("/auth/token", data={"grant_type": "password"})
    assert r.json()["error"] == "unsupported_grant_type"
    hs = jwt.encode({"iss": "ehr-gmf", "sub": "ehr-gmf", "aud": "http://testserver/auth/token",
                     "exp": int(time.time()) + 60, "jti": "x"}, "secret-secret-secret-secret-secret", "HS256")
    form = {"grant_type": "client_credentials", "scope": "system/*.rs", "client_assertion": hs,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    assert tc.post("/auth/token", data=form).status_code == 401
    big = tc.post("/auth/token", content=b"scope=" + b"x" * (65 * 1024),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (big.status_code, big.json()["error"]) == (413, "invalid_request")  # PIVOT_HTTP_MAX_FORM_BYTES


def test_defi_sante_operations_need_the_case_manager_scope(secured: tuple[TestClient, Security],
                                                          client_key: Any) -> None:
    tc, _ = secured
    reader = _token(tc, client_key, "ehr-gmf", "system/*.rs").json()["access_token"]
    manager = _token(tc, client_key, "case-mgr", "system/Patient.rs system/defi-sante.write").json()["access_token"]
    assert tc.post("/fhir/Patient/p1/$defi-sante-enroll", headers=_bearer(reader)).status_code == 403
    assert tc.post("/fhir/Patient/p1/$defi-sante-enroll", headers=_bearer(manager)).status_code == 200


def test_external_issuer_jwt_checked_against_its_jwks(tmp_path: Path) -> None:
    rsa_k, ec_k = rsa_key(), ec_key()
    calls: list[str] = []

    def jwks(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json={"keys": [public_jwk(rsa_k, "r1", "RS256"), public_jwk(ec_k, "e1", "ES384")]})

    issuer = Issuer("https://idp.example/realm", "https://idp.example/realm/certs", audience="pivot")
    from gateway.security.clients import ClientRegistry

    authn = Authenticator(frozenset({"jwt"}), ClientRegistry(), issuers=[issuer],
                          http=httpx.Client(transport=httpx.MockTransport(jwks)))
    now = int(time.time())
    claims = {"iss": issuer.issuer, "aud": "pivot", "exp": now + 60, "azp": "clsc-ehr", "scope": "system/Patient.rs"}
    p = authn.authenticate(jwt.encode(claims, rsa_k, "RS256", headers={"kid": "r1"}))
    assert p.client_id == "clsc-ehr"
    assert permits(p.scopes, "Patient", "read")
    assert p.method == "jwt"
    assert authn.authenticate(jwt.encode(claims, ec_k, "ES384", headers={"kid": "e1"})).client_id == "clsc-ehr"
    assert len(calls) == 1  # cached
    bad = [jwt.encode({**claims, "aud": "other"}, rsa_k, "RS256", headers={"kid": "r1"}),
           jwt.encode({**claims, "exp": now - 120}, rsa_k, "RS256", headers={"kid": "r1"}),
           jwt.encode({**claims, "iss": "https://evil"}, rsa_k, "RS256", headers={"kid": "r1"}),
           jwt.encode(claims, rsa_key(), "RS256", headers={"kid": "r1"}),
           jwt.encode(claims, "a-shared-secret-a-shared-secret!", "HS256", headers={"kid": "r1"}),
           jwt.encode(claims, None, "none")]
    for token in bad:
        with pytest.raises(Unauthorized):
            authn.authenticate(token)
    authn.close()


# -- start-up ----------------------------------------------------------------------------------------
def test_startup_refuses_an_exposed_gateway_without_auth(tmp_path: Path) -> None:
    assert check_startup(_settings(tmp_path))  # loopback, no auth: a warning
    with pytest.raises(ConfigError, match="PIVOT_AUTH") as info:
        check_startup(_settings(tmp_path, host="0.0.0.0"))
    assert "PIVOT_HOST" in str(info.value)
    tokens = tokens_file(tmp_path / "t.json", {})
    with pytest.raises(ConfigError, match="PIVOT_MLLP_PLAIN"):
        check_startup(_settings(tmp_path, host="0.0.0.0", auth="tokens", auth_tokens_file=tokens))
    ok = check_startup(_settings(tmp_path, host="10.1.2.3", auth="tokens", auth_tokens_file=tokens, mllp_plain=True))
    assert any("plain MLLP" in w for w in ok)
    with pytest.raises(ConfigError, match="PIVOT_AUTH_TOKENS_FILE"):
        check_startup(_settings(tmp_path, auth="tokens"))
    with pytest.raises(ConfigError, match="PIVOT_AUTH"):
        check_startup(_settings(tmp_path, auth="kerberos"))


def test_smart_needs_a_configured_token_url(tmp_path: Path) -> None:
    clients = write_json(tmp_path / "clients.json", {"clients": []})
    for url in ("", "/auth/token", "pivot.example/auth/token"):
        settings = _settings(tmp_path, auth="smart", auth_clients_file=clients, auth_token_url=url)
        with pytest.raises(ConfigError, match="PIVOT_AUTH_TOKEN_URL"):
            check_startup(settings)
        with pytest.raises(ConfigError, match="PIVOT_AUTH_TOKEN_URL"):
            Security(settings)
    assert not (tmp_path / "var" / "auth-signing-key.pem").exists()  # refused before the key is made
    check_startup(_settings(tmp_path, auth="smart", auth_clients_file=clients,
                            auth_token_url="https://pivot.example/auth/token"))


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    from gateway.app import Gateway
    from gateway.settings import load_settings

    data_dir = tmp_path / "new" / "var"
    gw = Gateway(load_settings(data_dir=data_dir, workers=False))
    try:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = [f for f in data_dir.iterdir() if f.is_file()]
        assert "instance-id" in {f.name for f in files}
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    finally:
        gw.close()


# -- allow-list --------------------------------------------------------------------------------------
def test_sender_allow_list(tmp_path: Path) -> None:
    tokens = tokens_file(tmp_path / "t.json", {
        "a": {"client_id": "site-hsa", "scopes": ["system/hl7v2.c"], "facilities": ["CSSS-SOMMETS-HSA"]},
        "b": {"client_id": "pharm-12", "scopes": ["system/hl7v2.c"], "facilities": ["*"], "messages": ["pharmacy"]},
    })
    security = Security(_settings(tmp_path, auth="tokens", auth_tokens_file=tokens))
    try:
        adt = parse(er_message(0, site=0))
        assert adt.sending_facility == "CSSS-SOMMETS-HSA"
        security.authorize_message("", adt)  # anonymous transport: no allow-list
        security.authorize_message("site-hsa", adt)
        with pytest.raises(ForbiddenError) as info:
            security.authorize_message("site-hsa", parse(er_message(1, site=1)))  # another site's facility
        assert info.value.ack_code == "AR"
        assert info.value.hl7_code == "207"
        with pytest.raises(ForbiddenError, match="adt"):
            security.authorize_message("pharm-12", adt)  # a pharmacy sends pharmacy messages only
        with pytest.raises(ForbiddenError):
            security.authorize_message("stranger", adt)
        with pytest.raises(ForbiddenError):
            security.authorize_message("cn:unmapped.example", adt)
    finally:
        security.close()

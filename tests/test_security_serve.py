"""Security through a real ``pivot serve`` process configured by environment variables.

Refusal to start exposed without auth; 401/403/200 with static tokens and with a JWT from our
token endpoint; the HL7v2 sender allow-list over POST /hl7v2; AuditEvents queried with
``pivot audit``; no token or health data in the process's logs.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.samples import er_message
from tests.conftest import ROOT
from tests.security_helpers import assertion, public_jwk, rsa_key, tokens_file, write_json

SITE = "site-token-hsa-0123456789"
PHARMACY = "pharmacy-token-0123456789"
READER = "reader-token-0123456789"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}


def test_refuses_to_start_on_a_public_address_without_auth(serve_factory: Any) -> None:
    gw = serve_factory(env={"PIVOT_HOST": "0.0.0.0"})
    with pytest.raises(RuntimeError, match="PIVOT_AUTH") as info:
        gw.start(timeout_s=20)
    assert "PIVOT_HOST" in str(info.value)


def test_refuses_to_start_smart_without_the_token_url(serve_factory: Any, tmp_path: Path) -> None:
    clients = write_json(tmp_path / "clients.json", {"clients": []})
    gw = serve_factory(env={"PIVOT_AUTH": "smart", "PIVOT_AUTH_CLIENTS_FILE": str(clients)})
    with pytest.raises(RuntimeError, match="PIVOT_AUTH_TOKEN_URL"):
        gw.start(timeout_s=20)
    gw.env["PIVOT_AUTH_TOKEN_URL"] = "/auth/token"  # relative: the Host would complete it
    with pytest.raises(RuntimeError, match="PIVOT_AUTH_TOKEN_URL"):
        gw.start(timeout_s=20)


def test_auth_allow_list_and_audit_through_pivot_serve(serve_factory: Any, tmp_path: Path) -> None:
    key = rsa_key()
    tokens = tokens_file(tmp_path / "tokens.json", {
        SITE: {"client_id": "site-hsa", "scopes": ["system/hl7v2.c"], "facilities": ["CSSS-SOMMETS-HSA"],
               "messages": ["adt"]},
        PHARMACY: {"client_id": "pharm-12", "scopes": ["system/hl7v2.c"], "facilities": ["*"],
                   "messages": ["pharmacy"]},
        READER: {"client_id": "clsc-reader", "scopes": ["system/Patient.rs"]},
    })
    clients = write_json(tmp_path / "clients.json", {"clients": [
        {"client_id": "ehr-gmf", "scopes": ["system/*.rs", "system/metrics.r"],
         "jwks": {"keys": [public_jwk(key, "k1", "RS384")]}}]})
    gw = serve_factory(env={"PIVOT_AUTH": "tokens,smart", "PIVOT_AUTH_TOKENS_FILE": str(tokens),
                            "PIVOT_AUTH_CLIENTS_FILE": str(clients)})
    gw.env["PIVOT_AUTH_TOKEN_URL"] = f"{gw.base}/auth/token"
    gw.data_dir.mkdir(parents=True)
    os.chmod(gw.data_dir, 0o755)  # as an older gateway (or a umask of 022) left it
    gw.start()
    base = gw.base

    # HL7v2 in: the scope, then the sender's allow-list
    assert httpx.post(f"{base}/hl7v2", content=er_message(1, site=0), headers=ER7).status_code == 401
    def send(i: int, site: int, token: str) -> httpx.Response:
        return httpx.post(f"{base}/hl7v2", content=er_message(i, site=site),
                          headers={**ER7, "Authorization": f"Bearer {token}"})

    assert send(1, 0, READER).status_code == 403
    assert send(2, 0, PHARMACY).headers["x-hl7-ack-code"] == "AR"  # a pharmacy may not send ADT
    assert send(3, 1, SITE).headers["x-hl7-ack-code"] == "AR"  # not its facility
    assert send(4, 0, SITE).headers["x-hl7-ack-code"] == "AA"

    # FHIR out: 401 without a token, 403 with the wrong scope, 200 with the right one
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/fhir/Patient").status_code == 401
    reader = {"Authorization": f"Bearer {READER}"}
    assert httpx.get(f"{base}/fhir/Encounter", headers=reader).status_code == 403
    assert httpx.get(f"{base}/metrics", headers=reader).status_code == 403

    def patients() -> list[str]:
        bundle = httpx.get(f"{base}/fhir/Patient", headers=reader, timeout=10).json()
        return [e["resource"]["id"] for e in bundle.get("entry", [])]

    from tests.e2e_helpers import wait_for

    pid = wait_for(lambda: (patients() or [None])[0])
    assert httpx.get(f"{base}/fhir/Patient/{pid}", headers=reader).status_code == 200

    # SMART Backend Services against our own token endpoint
    form = {"grant_type": "client_credentials", "scope": "system/*.rs system/metrics.r",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(key, "ehr-gmf", f"{base}/auth/token")}
    token = httpx.post(f"{base}/auth/token", data=form).json()["access_token"]
    smart = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{base}/fhir/Encounter", headers=smart).status_code == 200
    assert httpx.get(f"{base}/metrics", headers=smart).status_code == 200
    # the aud is PIVOT_AUTH_TOKEN_URL, never the Host a client sends (nor does discovery echo it)
    spoofed = {"Host": "pivot.evil.example"}
    conf = httpx.get(f"{base}/.well-known/smart-configuration", headers=spoofed).json()
    assert conf["token_endpoint"] == f"{base}/auth/token"
    assert "evil" not in conf["jwks_uri"]
    forged = {**form, "client_assertion": assertion(key, "ehr-gmf", "http://pivot.evil.example/auth/token")}
    assert httpx.post(f"{base}/auth/token", data=forged, headers=spoofed).json()["error"] == "invalid_client"

    # pivot audit: the read and the searches of that patient, by whom
    env = {**os.environ, "PIVOT_DATA_DIR": str(gw.data_dir)}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "--patient", pid, "--since", "2000-01-01"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "read" in out
    assert "client=clsc-reader" in out
    assert "search-type" in out
    assert "client=ehr-gmf" in out

    gw.stop()
    logs = gw.logs()
    assert "authentication is off" not in logs
    # the data dir: tightened to 0700 (with a warning), instance-id 0600 like every other file
    assert stat.S_IMODE(gw.data_dir.stat().st_mode) == 0o700
    assert "now 0700" in logs
    assert stat.S_IMODE((gw.data_dir / "instance-id").stat().st_mode) == 0o600
    for secret in (SITE, PHARMACY, READER, token):
        assert secret not in logs

"""The production stack (docker-compose.yml: Kafka KRaft, HAPI FHIR on PostgreSQL, the gateway)
brought up with pytest-docker where a Docker engine runs. Where none runs (as on the CI machine of
this project), the test says so plainly: the same scenario then runs against a Kafka-protocol broker
(tansu) and a FHIR server we did not write (sekmet) in test_e2e_kafka.py and test_delivery_*.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.samples import er_message

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docker


def _docker_engine() -> str:
    """'' when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client installed"
    try:
        out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                             text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    return "" if out.returncode == 0 and out.stdout.strip() else "no Docker engine is running (docker info failed)"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(ROOT / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up --build -d"]


def test_compose_stack_end_to_end(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    why = _docker_engine()
    if why:
        pytest.skip(f"{why}: the compose stack cannot run here; the same scenario runs against tansu "
                    "(test_e2e_kafka.py) and sekmet-fhir (test_delivery_*.py)")
    monkeypatch.setenv("HAPI_DB_PASSWORD", "pivot-test-only")
    monkeypatch.setenv("PIVOT_DB_PASSWORD", "pivot-state-test-only")
    token = "compose-test-token"
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({hashlib.sha256(token.encode()).hexdigest(): {
        "client_id": "compose-test", "scopes": ["system/hl7v2.c", "system/*.rs"], "facilities": ["*"],
        "messages": ["*"]}}))
    monkeypatch.setenv("PIVOT_TOKENS_FILE", str(tokens))
    services: Any = request.getfixturevalue("docker_services")
    base = f"http://127.0.0.1:{services.port_for('gateway', 8080)}"
    services.wait_until_responsive(timeout=600, pause=5,
                                   check=lambda: httpx.get(f"{base}/healthz", timeout=3).status_code == 200)
    resp = httpx.post(f"{base}/hl7v2", content=er_message(1), timeout=30,
                      headers={"Content-Type": "text/plain", "Authorization": f"Bearer {token}"})
    assert b"MSA|AA" in resp.content
    hapi = f"http://127.0.0.1:{services.port_for('hapi', 8080)}/fhir"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = httpx.get(f"{hapi}/Encounter", params={"class": "EMER"}, timeout=10).json()
        if found.get("total", len(found.get("entry", []))):
            return
        time.sleep(2)
    raise AssertionError("the Encounter did not reach HAPI FHIR")

"""Shared fixtures: corpus location, a gateway on the embedded defaults, a `pivot serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["tests.kafka_fixtures", "tests.fhir_server_fixtures", "tests.fhir_fixtures", "tests.pg_fixtures",
                  "tests.console_page_fixtures", "tests.canary_plugin"]

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"conformance corpus not found at {CORPUS} (../shared/corpus beside the repo)")
    return CORPUS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`pivot serve` as a real process on free loopback ports."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.mllp_port = free_port()
        self.env = {**os.environ, "PIVOT_DATA_DIR": str(data_dir), "PIVOT_HTTP_PORT": str(self.http_port),
                    "PIVOT_MLLP_PORT": str(self.mllp_port), "PIVOT_HOST": "127.0.0.1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "serve.log"
        self.new_session = False  # True: the leader of its own process group (killpg reaches its children)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30.0) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=self.env,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=self.new_session)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pivot serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.mllp_port), timeout=1):
                        return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("pivot serve did not become ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[type[ServeProcess] | object]:
    started: list[ServeProcess] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> ServeProcess:
        proc = ServeProcess(data_dir or tmp_path / "var", env)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()

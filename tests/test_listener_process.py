"""The MLLP listener in its own process (gateway.listener): it serves, its work reaches the workers
of the parent (handoff, wake-ups, metrics), it dies with the parent and is restarted when it dies
alone; the pieces it rests on (SharedMapCache, EmbeddedLog.follow, Metrics.merged) one by one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.eventlog import embedded
from gateway.eventlog.base import OutRecord
from gateway.eventlog.embedded import EmbeddedLog
from gateway.eventlog.state.handoff import open_handoff
from gateway.metrics import Metrics
from gateway.samples import er_message
from mappings import MapResult
from tests.conftest import ROOT, free_port
from tests.e2e_helpers import FrameReader, ack_field, entries, port_bindable, search, wait_for


def _children(pid: int) -> list[int]:
    return [int(x) for task in Path(f"/proc/{pid}/task").iterdir() if (task / "children").exists()
            for x in (task / "children").read_text().split()]


def _listener_pid(pid: int) -> int:
    for child in _children(pid):
        if b"gateway.listener" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    raise AssertionError("no listener child process")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _send(port: int, raw: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
        return ack_field(FrameReader(sock).frame(timeout_s=10), "MSA", 1)


def test_listener_serves_and_its_messages_reach_the_store_and_metrics(serve_factory: Any) -> None:
    gw = serve_factory().start()
    assert gw.proc is not None
    child = _listener_pid(gw.proc.pid)
    assert _send(gw.mllp_port, er_message(1)) == "AA"
    assert _send(gw.mllp_port, er_message(1)) == "AA"  # a duplicate: ACKed again
    wait_for(lambda: len(entries(search(gw.base, "Encounter"))) == 1)  # mapped and stored by the parent
    # the child's counters are in the parent's /metrics (written every second)
    wait_for(lambda: 'duplicate="true"' in httpx.get(f"{gw.base}/metrics").text)
    text = httpx.get(f"{gw.base}/metrics").text
    assert 'pivot_ack_seconds_count{transport="mllp"} 2' in text
    assert "pivot_mllp_connections_total" in text
    assert _alive(child)


def test_sigkill_of_the_gateway_takes_the_listener_with_it(serve_factory: Any) -> None:
    gw = serve_factory().start()
    assert gw.proc is not None
    child = _listener_pid(gw.proc.pid)
    assert str(gw.proc.pid) in Path(f"/proc/{child}/task/{child}/stat").read_text().split()[3]  # main thread's child
    gw.kill()
    wait_for(lambda: not _alive(child), timeout_s=10)
    # the port is free again for the restart (the main thread shows as a zombie while the other
    # threads still exit, with the socket: a moment later, not at once)
    wait_for(lambda: port_bindable(gw.mllp_port), timeout_s=10)


def test_a_listener_that_dies_alone_is_restarted(serve_factory: Any) -> None:
    gw = serve_factory().start()
    assert gw.proc is not None
    first = _listener_pid(gw.proc.pid)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not _alive(first), timeout_s=10)

    def serving() -> bool:
        try:
            return _send(gw.mllp_port, er_message(2)) == "AA"
        except OSError:
            return False

    wait_for(serving, timeout_s=30)
    assert _listener_pid(gw.proc.pid) != first
    assert "MLLP listener process exited" in gw.logs()


def test_port_in_use_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PIVOT_DATA_DIR": str(tmp_path), "PIVOT_HTTP_PORT": str(free_port()),
               "PIVOT_MLLP_PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"PIVOT_MLLP_PORT={port}" in done.stderr


# -- the pieces --------------------------------------------------------------------------------------
def test_shared_cache_hands_a_result_to_another_instance(tmp_path: Path) -> None:
    writer, reader = open_handoff("", tmp_path), open_handoff("", tmp_path)
    result = MapResult(resources=[{"resourceType": "Patient", "id": "p1", "name": [{"family": "Côté"}]}],
                       patient_id="p1", message_code="ADT", trigger="A04", sender="APP|FAC", control_id="c1",
                       event_time="2026-01-01T08:00:00-05:00")
    writer.put("APP|FAC|c1", result)
    assert reader.pop("APP|FAC|c1") == result
    assert reader.pop("APP|FAC|c1") == result  # taken, kept a while: a worker killed before its commit finds it again
    assert oct((tmp_path / "handoff.sqlite").stat().st_mode & 0o777) == oct(0o600)
    writer.close()
    reader.close()


def test_follow_wakes_consumers_on_another_instances_commit(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_RECHECK_S", 60.0)  # without the pipe, a poll would sleep 60 s
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    here = EmbeddedLog(tmp_path / "log.sqlite")
    there = EmbeddedLog(tmp_path / "log.sqlite", notify_fd=write_fd)
    here.follow(read_fd)
    consumer = here.consumer("g", ["t"])
    assert consumer.poll(timeout_s=0.1) == []
    got: list[int] = []
    waiting = threading.Thread(target=lambda: got.extend(r.offset for r in consumer.poll(timeout_s=30)))
    waiting.start()
    time.sleep(0.2)
    started = time.monotonic()
    there.append(OutRecord(topic="t", value=b"x", key=b"k", headers={}))
    waiting.join(40)
    assert got
    assert time.monotonic() - started < 10
    consumer.close()
    there.close()
    here.close()
    os.close(write_fd)


def test_merged_metrics_sum_counters_and_histograms() -> None:
    mine, theirs = Metrics(), Metrics()
    mine.inc("pivot_messages_total", code="AA", sender="A")
    theirs.inc("pivot_messages_total", 2, code="AA", sender="A")
    theirs.inc("pivot_messages_total", code="AR", sender="B")
    theirs.observe("pivot_ack_seconds", 0.003, transport="mllp")
    merged = mine.merged(theirs.snapshot())
    assert merged.value("pivot_messages_total", code="AA", sender="A") == 3
    assert merged.value("pivot_messages_total", code="AR", sender="B") == 1
    assert 'pivot_ack_seconds_count{transport="mllp"} 1' in merged.render()
    assert mine.value("pivot_messages_total", code="AA", sender="A") == 1  # unchanged

"""Worker threads yield the CPU to the intake: lower priority, and one CPU left to the intake."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway import workers
from gateway.eventlog import worker as workers_base
from gateway.samples import er_message

ROOT = Path(__file__).resolve().parents[1]


def _in_thread(fn: object) -> tuple[int, set[int]]:
    """Run ``fn`` in a new thread; that thread's (nice, CPU affinity) afterwards."""
    out: list[tuple[int, set[int]]] = []

    def body() -> None:
        if callable(fn):
            fn()
        tid = threading.get_native_id()
        out.append((os.getpriority(os.PRIO_PROCESS, tid), set(os.sched_getaffinity(tid))))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0]


def test_a_worker_thread_runs_at_a_lower_priority_than_the_intake() -> None:
    before, _ = _in_thread(None)
    nice, _ = _in_thread(workers.yield_to_intake)
    assert nice == max(before, workers.WORKER_NICE)  # never raised above what it was
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the caller's own thread unchanged


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to leave to the intake")
def test_worker_threads_leave_one_cpu_to_the_intake() -> None:
    allowed = set(os.sched_getaffinity(0))
    _, cpus = _in_thread(workers.yield_to_intake)
    assert cpus == allowed - {min(allowed)}
    assert set(os.sched_getaffinity(0)) == allowed  # the process (and the intake) keep every CPU


def test_with_one_cpu_the_workers_keep_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[set[int]] = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: calls.append(set(cpus)))
    workers.yield_to_intake()
    assert calls == []


def test_a_backfill_gives_way_to_the_gateway_it_feeds() -> None:
    before, _ = _in_thread(None)
    nice, _ = _in_thread(workers_base.give_way_to_live)
    assert nice == max(before, workers_base.BULK_NICE)
    assert workers_base.BULK_NICE > workers.WORKER_NICE  # history below the live lane's workers


def test_pivot_ingest_runs_below_the_gateway_and_its_pool_with_it(tmp_path: Path) -> None:
    """The ingest command lowers itself before its pool starts: the pool's processes inherit it."""
    feed = tmp_path / "history.hl7"
    feed.write_bytes(er_message(1) + b"\n" + er_message(2) + b"\n")
    probe = ("import os, sys\nfrom gateway.cli import main\nrc = main(['ingest', '--no-progress', '--jobs', '2', "
             "sys.argv[1]])\nprint('nice', os.getpriority(os.PRIO_PROCESS, 0), 'rc', rc)")
    env = {**os.environ, "PIVOT_DATA_DIR": str(tmp_path / "var"), "PIVOT_LOG_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-c", probe, str(feed)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert f"nice {max(os.getpriority(os.PRIO_PROCESS, 0), workers_base.BULK_NICE)} rc 0" in out

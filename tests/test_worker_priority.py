"""Worker threads yield the CPU to the intake: lower priority, and one CPU left to the intake."""

from __future__ import annotations

import os
import threading

import pytest

from gateway import workers


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

"""Pivot against the Python peer, in the same run, on the same messages (issue #14).

The messages: ``N`` distinct ER registrations (A04) of ``gateway.samples.site_message`` (~1.4 KB,
one person each). Measured, one after the other on this machine:

- **peer**: v2fhir (PyPI ``hl7v2-fhir-bridge``, the ``bench`` extra)
  ``validate_bundle(convert(parse_bytes(raw), load_config()).bundle)``, one thread (one core);
- **Pivot in process**: parse + map + validate, one thread (bench.__main__.pivot_mapper);
- **Pivot end to end**: ``pivot ingest`` of the N messages (one file) into a running ``pivot serve``
  (embedded defaults, fresh data dir), timed from the ingest's start until the store holds the N
  Patients and the last one is readable at /fhir.

The in-memory figures: ``repeat`` passes over all N messages, the peer and Pivot alternating every
250 messages (a neighbour's load falls on both alike), in messages per second (wall) and per
CPU-second (``time.process_time``); end to end per CPU-second counts the CPU of the ingest process
and of the gateway's processes (from /proc) from the ingest's start to the last Patient. Printed
with the ratios and the goals of issue #14 (end to end >= 2.0x the peer, in process >= 5x).
``python -m bench --only peer``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import cpu_s, reaped_cpu_s
from bench.serve import ROOT, free_port, start_serve
from gateway.identity.keys import nam_person_id
from gateway.samples import site_message, site_person

GOAL_E2E, GOAL_INPROC = 2.0, 5.0


def feed(n: int, first: int = 0) -> list[bytes]:
    """``n`` A04s of ``n`` different people (original mode), the same for every figure."""
    return [site_message(first + i) for i in range(n)]


def peer_converter() -> Callable[[bytes], object]:
    """v2fhir's parse + convert + validate of one message (its shipped configuration)."""
    from v2fhir.config import load_config  # type: ignore[import-untyped,unused-ignore]
    from v2fhir.convert import convert  # type: ignore[import-untyped,unused-ignore]
    from v2fhir.hl7.parser import parse_bytes  # type: ignore[import-untyped,unused-ignore]
    from v2fhir.validate import validate_bundle  # type: ignore[import-untyped,unused-ignore]

    config = load_config()

    def one(raw: bytes) -> object:
        bundle = convert(parse_bytes(raw), config).bundle
        validate_bundle(bundle)
        return bundle

    return one


@dataclass
class Tally:
    """Messages done and the wall / CPU seconds they took, summed over blocks."""

    n: int = 0
    wall: float = 0.0
    cpu: float = 0.0

    def time(self, one: Callable[[bytes], object], block: list[bytes]) -> None:
        t, c = time.perf_counter(), time.process_time()
        for raw in block:
            one(raw)
        self.wall += time.perf_counter() - t
        self.cpu += time.process_time() - c
        self.n += len(block)

    def rates(self) -> tuple[float, float]:
        return self.n / self.wall, self.n / self.cpu


def in_memory(msgs: list[bytes], repeat: int, block: int = 250) -> tuple[Tally, Tally]:
    """The peer and Pivot over the same messages, alternating every ``block`` messages (so a
    neighbour's load falls on both alike), ``repeat`` passes: (peer, Pivot)."""
    from bench.__main__ import pivot_mapper

    peer_one, pivot_one = peer_converter(), pivot_mapper()
    for raw in msgs[:100]:  # warm-up: imports, caches
        peer_one(raw)
        pivot_one(raw)
    peer, ours = Tally(), Tally()
    for _ in range(repeat):
        for k in range(0, len(msgs), block):
            peer.time(peer_one, msgs[k:k + block])
            ours.time(pivot_one, msgs[k:k + block])
    return peer, ours


def run_ingest(data: Path, files: list[Path], http: int, mllp: int) -> subprocess.Popen[bytes]:
    """``pivot ingest FILES`` against ``data`` (the running gateway's data dir), started, not waited for."""
    env = {**os.environ, "PIVOT_DATA_DIR": str(data), "PIVOT_HTTP_PORT": str(http), "PIVOT_MLLP_PORT": str(mllp),
           "PIVOT_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "ingest", "--no-progress", *map(str, files)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE)


def count(base: str, rtype: str, **params: str) -> int:
    """``total`` of a ``_summary=count`` search (-1 when the gateway does not answer)."""
    try:
        reply = httpx.get(f"{base}/fhir/{rtype}", params={"_summary": "count", **params}, timeout=30)
        return int(reply.json().get("total", 0))
    except (httpx.HTTPError, ValueError):
        return -1


def wait_for(check: Callable[[], bool], timeout_s: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


@dataclass(frozen=True)
class EndToEnd:
    rate: float  # messages per second (0 when the store did not get there in time)
    seconds: float  # ingest start -> last Patient readable
    ingest_s: float  # the ingest command alone
    patients: int
    summary: str  # the ingest's summary line
    ingest_cpu_s: float  # CPU of the pivot ingest process
    gateway_cpu_s: float  # CPU of pivot serve and its listener child meanwhile


def bench_end_to_end(msgs: list[bytes], last_person: int) -> EndToEnd:
    """Seconds from the start of ``pivot ingest`` until all Patients are stored and the last is readable."""
    data = Path(tempfile.mkdtemp(prefix="pivot-bench-peer-"))
    http, mllp = free_port(), free_port()
    feed_file = data.parent / f"{data.name}.hl7"
    feed_file.write_bytes(b"\n".join(msgs) + b"\n")
    proc = start_serve(data, http, mllp)
    base = f"http://127.0.0.1:{http}"
    last = f"{base}/fhir/Patient/{nam_person_id(site_person(last_person).nam)}"
    try:
        t, reaped, served = time.perf_counter(), reaped_cpu_s(), cpu_s(proc.pid)
        ingest = run_ingest(data, [feed_file], http, mllp)
        out, _ = ingest.communicate()
        ingested, ingest_cpu = time.perf_counter() - t, reaped_cpu_s() - reaped
        done = wait_for(lambda: count(base, "Patient") >= len(msgs)
                        and httpx.get(last, timeout=30).status_code == 200, 1800)
        seconds, gateway_cpu = time.perf_counter() - t, cpu_s(proc.pid) - served
        patients = count(base, "Patient")
    finally:
        proc.terminate()
        proc.wait(60)
        feed_file.unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)
    return EndToEnd(len(msgs) / seconds if done else 0.0, seconds, ingested, patients,
                    out.decode(errors="replace").strip(), ingest_cpu, gateway_cpu)


def run(n: int = 5_000, repeat: int = 3) -> dict[str, float]:
    msgs = feed(n)
    peer_tally, ours_tally = in_memory(msgs, repeat)
    (peer, peer_cpu), (inproc, inproc_cpu) = peer_tally.rates(), ours_tally.rates()
    e2e = bench_end_to_end(msgs, n - 1)
    size = statistics.mean(len(m) for m in msgs)
    print(f"\nPivot vs the Python peer v2fhir — {n:,} distinct ER A04s (~{size:,.0f} B, site_message), same run")
    print(f"{'':<64}{'msg/s':>10}{'per CPU-s':>11}")
    print(f"{'v2fhir parse + convert + validate, one core':<64}{peer:>10,.0f}{peer_cpu:>11,.0f}")
    print(f"{'Pivot parse + map + validate in process, one core':<64}{inproc:>10,.0f}{inproc_cpu:>11,.0f}  "
          f"({repeat} passes, alternating every 250 messages)")
    cpu = e2e.ingest_cpu_s + e2e.gateway_cpu_s
    print(f"{'Pivot end to end: pivot ingest -> last Patient readable':<64}{e2e.rate:>10,.0f}{n / cpu:>11,.0f}  "
          f"({e2e.seconds:.1f} s; the ingest command {e2e.ingest_s:.1f} s)")
    print(f"{'  CPU ms per message: ingest process / gateway (serve + listener)':<64}"
          f"{e2e.ingest_cpu_s * 1000 / n:>10.2f} / {e2e.gateway_cpu_s * 1000 / n:.2f}")
    print(f"{'  Patients at /fhir / messages':<64}{e2e.patients:>10,} / {n:,}   ingest: {e2e.summary}")
    print(f"{'  end to end / peer (goal >= 2.0x)':<64}{e2e.rate / peer:>9.2f}x{n / cpu / peer_cpu:>10.2f}x  "
          f"{'met' if e2e.rate / peer >= GOAL_E2E else 'NOT met'}")
    print(f"{'  in process / peer (goal >= 5x)':<64}{inproc / peer:>9.2f}x{inproc_cpu / peer_cpu:>10.2f}x  "
          f"{'met' if inproc / peer >= GOAL_INPROC else 'NOT met'}")
    return {"peer": peer, "inproc": inproc, "e2e": e2e.rate, "peer_cpu": peer_cpu, "inproc_cpu": inproc_cpu}

"""Look-alike test patients (issue #12 item 6): 5,000 look-alikes vs 5,000 different people.

Sites send test patients: same name, birth date and sex, a new MRN each, no NAM. Each one joins the
cluster of its look-alikes (gateway/identity/clusters.py): the work per message must not grow with
the cluster. Two fresh ``pivot serve`` runs over MLLP (4 connections, as fast as ACKs come back):
the same number of A04s, once all look-alikes, once all different people (gateway.samples). Reported:
ACK rate, the rate of the last fifth against the first fifth (flat work: about 1), the time until
the store holds them all, peak resident memory of the gateway's processes, and Flags stored.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.serve import free_port, rss_kb, start_serve
from gateway.samples import er_message

_PID = re.compile(rb"PID\|[^\r]*")
_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def lookalike(i: int) -> bytes:
    """The i-th A04 of a test patient: er_message(i) with its PID replaced (no NAM, same person)."""
    pid = f"PID|1||TST{i:06d}^^^HSA^MR||Test^Patient^^^^^L||19800101|F".encode()
    return _PID.sub(pid, er_message(i, site=0), count=1)


def _peak(pid: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(rss_kb(pid))
        time.sleep(0.2)


def _count(http: int, rtype: str, **params: str) -> int:
    try:
        resp = httpx.get(f"http://127.0.0.1:{http}/fhir/{rtype}", params={"_summary": "count", **params}, timeout=30)
        return int(resp.json().get("total", 0))
    except (httpx.HTTPError, ValueError):
        return 0


def run_one(msgs: list[bytes]) -> dict[str, float]:
    from bench.__main__ import rate, run_clients

    data = Path(tempfile.mkdtemp(prefix="pivot-bench-lookalikes-"))
    http, mllp = free_port(), free_port()
    proc = start_serve(data, http, mllp)
    stop, samples = threading.Event(), [rss_kb(proc.pid)]
    watcher = threading.Thread(target=_peak, args=(proc.pid, stop, samples), daemon=True)
    watcher.start()
    try:
        fifth = len(msgs) // 5
        first_s, _l, _c = run_clients(mllp, msgs[:fifth], connections=4)
        middle_s, _l, _c = run_clients(mllp, msgs[fifth:-fifth], connections=4)
        last_s, _l, codes = run_clients(mllp, msgs[-fifth:], connections=4)
        t = time.perf_counter()
        deadline = time.monotonic() + 900
        while _count(http, "Encounter") < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.5)
        drain = time.perf_counter() - t
        flags = _count(http, "Flag", status="active")
    finally:
        stop.set()
        watcher.join()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    return {"rate": rate(len(msgs), first_s + middle_s + last_s), "first": rate(fifth, first_s),
            "last": rate(fifth, last_s), "drain_s": drain, "peak_mb": max(samples) / 1024, "flags": float(flags),
            "aa_last": float(codes.count("AA"))}


def resolve_rates(msgs: list[bytes]) -> tuple[float, float, float]:
    """In one process, without the network: map + identity resolution (SQLite index on disk) of
    ``msgs``; messages/s of the first fifth, the last fifth, and the index file's size in MB."""
    from gateway.identity import IdentityResolver
    from gateway.pipeline import Pipeline
    from mappings import IdentifierSystems, Profiles

    data = Path(tempfile.mkdtemp(prefix="pivot-bench-resolve-"))
    resolver = IdentityResolver(data)
    spine = Pipeline(Profiles.load(None, "America/Montreal"), IdentifierSystems.load(None), resolver)
    fifth, marks = len(msgs) // 5, [time.perf_counter()]
    try:
        for i, raw in enumerate(msgs, 1):
            outcome = spine.run(raw, _NOW)
            assert outcome.result is not None, outcome.error
            if i % fifth == 0:
                marks.append(time.perf_counter())
    finally:
        resolver.close()
    size = sum(f.stat().st_size for f in data.iterdir()) / 1e6
    shutil.rmtree(data, ignore_errors=True)
    return fifth / (marks[1] - marks[0]), fifth / (marks[-1] - marks[-2]), size


def bench_lookalikes(n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, msgs in (("look-alikes", [lookalike(i) for i in range(n)]),
                       ("different people", [er_message(i, site=0) for i in range(n)])):
        first, last, size = resolve_rates(msgs)
        out[name] = {**run_one(msgs), "resolve_first": first, "resolve_last": last, "index_mb": size}
    return out


def report(results: dict[str, dict[str, float]]) -> None:
    print("look-alike test patients (issue #12): same number of A04s, 4 MLLP connections")
    print(f"{'  run':<22}{'ACK msg/s':>10}{'first/last 1/5':>18}{'store drained s':>17}{'peak RSS MB':>13}"
          f"{'active Flags':>14}")
    for name, r in results.items():
        print(f"{'  ' + name:<22}{r['rate']:>10,.0f}{r['first']:>10,.0f} / {r['last']:<5,.0f}{r['drain_s']:>17.1f}"
              f"{r['peak_mb']:>13.0f}{r['flags']:>14,.0f}")
    print("  in one process, map + identity resolution (no network), msg/s first / last fifth, index size")
    for name, r in results.items():
        print(f"{'  ' + name:<22}{r['resolve_first']:>10,.0f} / {r['resolve_last']:<8,.0f}{r['index_mb']:>10.1f} MB")


def run_and_report(n: int) -> None:
    report(bench_lookalikes(n))

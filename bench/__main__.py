"""Benchmark: tokenizer vs hl7apy vs parse+map+validate vs end-to-end MLLP → AA (embedded defaults).

Every figure is measured in this run on this machine; the ratios between them are what to compare
across machines. Run with ``make bench`` (``python -m bench [--messages N]``); ``--only e2e`` runs
the parse+map+validate and end-to-end figures alone, ``--only lookalikes`` the look-alike test
patients run alone (bench/lookalikes.py). Issue #14's figures, on the realistic site messages of
``gateway.samples.site_message``: ``--only peer`` (v2fhir vs Pivot in process vs ``pivot ingest``
end to end, bench/peer.py), ``--only site`` (MLLP AA/CA latency with python-hl7's client, both
acknowledgement modes, bench/site.py), ``--only backfill`` (a CSSS year, ``--backfill N``,
bench/backfill.py). The default runs everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.serve import free_port, read_ack, start_serve
from gateway.hl7v2 import parse
from gateway.samples import er_message

START, END = b"\x0b", b"\x1c\x0d"


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_tokenizer(msgs: list[bytes]) -> float:
    t = time.perf_counter()
    for raw in msgs:
        m = parse(raw)
        for seg in m.segments:
            for n in range(1, seg.size + 1):
                seg.reps(n)
    return rate(len(msgs), time.perf_counter() - t)


def bench_hl7apy(msgs: list[bytes]) -> float:
    from hl7apy.parser import parse_message

    t = time.perf_counter()
    for raw in msgs:
        parse_message(raw.decode("utf-8"), find_groups=False)
    return rate(len(msgs), time.perf_counter() - t)


def bench_ack(msgs: list[bytes]) -> float:
    """ACKs built per second (AA from a parsed message)."""
    from gateway.hl7v2.ack import build_ack

    parsed = [parse(raw) for raw in msgs]
    t = time.perf_counter()
    for m in parsed:
        build_ack("AA", msg=m)
    return rate(len(parsed), time.perf_counter() - t)


def pivot_mapper() -> Callable[[bytes], object]:
    """Pivot's parse + map + validate of one message (embedded defaults' profiles and systems): the
    pipeline spine without identity (gateway/pipeline.py), the steps the intake runs."""
    from gateway.pipeline import Pipeline
    from mappings import IdentifierSystems, Profiles

    spine = Pipeline(Profiles.load(None, "America/Montreal"), IdentifierSystems.load(None), identity=None)
    now = datetime.now(UTC)

    def one(raw: bytes) -> object:
        outcome = spine.run(raw, now)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    return one


def bench_map(msgs: list[bytes]) -> float:
    one = pivot_mapper()
    t = time.perf_counter()
    for raw in msgs:
        one(raw)
    return rate(len(msgs), time.perf_counter() - t)


def _client(port: int, msgs: list[bytes], latencies: list[float], codes: list[str], pace_s: float,
            first_at: float) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    next_at = first_at
    for raw in msgs:
        if pace_s:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_at += pace_s
        t = time.perf_counter()
        sock.sendall(START + raw + END)
        ack = read_ack(sock, buf)
        latencies.append(time.perf_counter() - t)
        codes.append(ack.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in ack else "??")
    sock.close()


def run_clients(
    port: int, msgs: list[bytes], connections: int, rate_per_s: float = 0
) -> tuple[float, list[float], list[str]]:
    latencies: list[float] = []
    codes: list[str] = []
    pace = connections / rate_per_s if rate_per_s else 0.0
    chunks = [msgs[i::connections] for i in range(connections)]
    # paced: connection i starts i/rate s after the first, so that together they send one message
    # every 1/rate s (started together, they would send in bursts of `connections` at once)
    t0 = time.perf_counter() + 0.05
    threads = [threading.Thread(target=_client, args=(port, c, latencies, codes, pace, t0 + i * pace / connections))
               for i, c in enumerate(chunks)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, latencies, codes


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def bench_e2e(n: int, paced_n: int) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="pivot-bench-"))
    http, mllp = free_port(), free_port()
    proc = start_serve(data, http, mllp)
    try:
        msgs = [er_message(i) for i in range(n)]
        seconds, lat, codes = run_clients(mllp, msgs, connections=10)
        drained = wait_stored(http, n)  # the paced run measures steady state, not a backlog
        paced = [er_message(n + i) for i in range(paced_n)]
        _s, plat, pcodes = run_clients(mllp, paced, connections=4, rate_per_s=200)
        # CPU taken by others (other jobs, the clients) shows in the tail: a second paced run
        paced2 = [er_message(n + paced_n + i) for i in range(paced_n)]
        _s, plat2, pcodes2 = run_clients(mllp, paced2, connections=4, rate_per_s=200)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    return {"e2e_rate": rate(n, seconds), "e2e_p50": pct(lat, 0.5), "e2e_p99": pct(lat, 0.99),
            "paced_p50": pct(plat, 0.5), "paced_p99": pct(plat, 0.99),
            "paced2_p50": pct(plat2, 0.5), "paced2_p99": pct(plat2, 0.99),
            "aa": float(codes.count("AA") + pcodes.count("AA") + pcodes2.count("AA")),
            "total": float(n + 2 * paced_n),
            "drain_s": drained}


def wait_stored(http_port: int, count: int, timeout_s: float = 600.0) -> float:
    """Seconds until the embedded store holds ``count`` Encounters (the workers caught up)."""
    import httpx

    t = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = httpx.get(f"http://127.0.0.1:{http_port}/fhir/Encounter", params={"_summary": "count"},
                            timeout=10).json().get("total", 0)
        except (httpx.HTTPError, ValueError):
            got = 0
        if got >= count:
            break
        time.sleep(0.2)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--messages", type=int, default=10_000, help="messages for the end-to-end run")
    ap.add_argument("--paced", type=int, default=2_000, help="messages for the 200 msg/s latency run")
    ap.add_argument("--ds-background", type=int, default=20_000, help="Défi Santé: background messages")
    ap.add_argument("--ds-alerts", type=int, default=200, help="Défi Santé: alert-raising arrivals")
    ap.add_argument("--ds-rate", type=float, default=300.0, help="Défi Santé: background msg/s")
    ap.add_argument("--ds-backfill", type=int, default=20_000,
                    help="Défi Santé: arrivals while pivot ingest loads this many history messages (0 = skip)")
    ap.add_argument("--load-seconds", type=float, default=300.0,
                    help="sustained load: seconds at 300 msg/s over 20 connections (0 = skip)")
    ap.add_argument("--lookalikes", type=int, default=5_000,
                    help="look-alike test patients vs as many different people (0 = skip)")
    ap.add_argument("--peer-messages", type=int, default=5_000,
                    help="peer comparison: distinct ER A04s (v2fhir, in process, pivot ingest end to end; 0 = skip)")
    ap.add_argument("--peer-repeat", type=int, default=3, help="peer comparison: passes of the in-memory figures")
    ap.add_argument("--site-seconds", type=float, default=30.0,
                    help="MLLP latency as a site sends: seconds per mode (0 = skip)")
    ap.add_argument("--site-rate", type=float, default=200.0, help="MLLP latency as a site sends: msg/s")
    ap.add_argument("--site-connections", type=int, default=4, help="MLLP latency as a site sends: connections")
    ap.add_argument("--backfill", type=int, default=400_000,
                    help="messages of the simulated CSSS year backfilled through pivot ingest (0 = skip)")
    ap.add_argument("--only", choices=("e2e", "lookalikes", *ISSUE14),
                    help="run only one part: the end-to-end figures (parse+map+validate too), the look-alikes, "
                         "the peer comparison, the site latency or the backfill")
    ap.add_argument("--scale-messages", type=int, default=3_000, help="scale-out: 1 vs 2 instances on Kafka (0 = skip)")
    args = ap.parse_args()
    if args.only == "lookalikes":
        from bench.lookalikes import run_and_report

        run_and_report(args.lookalikes)
        return 0
    if args.only in ISSUE14:
        run_issue14(args, {args.only})
        return 0
    msgs = [er_message(i) for i in range(2_000)]
    tok = statistics.median(bench_tokenizer(msgs) for _ in range(3))
    apy = bench_hl7apy(msgs[:100])
    acks = bench_ack(msgs)
    full = statistics.median(bench_map(msgs) for _ in range(3))
    e2e = bench_e2e(args.messages, args.paced)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    print(f"\nPivot benchmark — {stamp}")
    print(f"{'measure':<52}{'value':>14}")
    print(f"{'tokenizer (ours), msg/s':<52}{tok:>14,.0f}")
    print(f"{'hl7apy parse_message, msg/s':<52}{apy:>14,.0f}")
    print(f"{'ACK build (ours), ACKs/s':<52}{acks:>14,.0f}")
    print(f"{'parse + map + validate (ours, one core), msg/s':<52}{full:>14,.0f}")
    print(f"{'end to end MLLP -> AA, 10 connections, msg/s':<52}{e2e['e2e_rate']:>14,.0f}")
    print(f"{'  AA latency p50 / p99 (ms)':<52}{e2e['e2e_p50']:>7.1f} / {e2e['e2e_p99']:.1f}")
    print(f"{'  then stored in the FHIR store after (s)':<52}{e2e['drain_s']:>14.1f}")
    print(f"{'paced 200 msg/s: AA latency p50 / p99 (ms)':<52}{e2e['paced_p50']:>7.1f} / {e2e['paced_p99']:.1f}")
    print(f"{'  the same, a second run':<52}{e2e['paced2_p50']:>7.1f} / {e2e['paced2_p99']:.1f}")
    print(f"{'AA received / sent':<52}{e2e['aa']:>9,.0f} / {e2e['total']:,.0f}")
    print("ratios")
    print(f"{'  tokenizer / hl7apy':<52}{tok / apy:>13.0f}x")
    print(f"{'  parse+map+validate / hl7apy':<52}{full / apy:>13.1f}x")
    print(f"{'  tokenizer / parse+map+validate':<52}{tok / full:>13.1f}x")
    print(f"{'  end to end / parse+map+validate':<52}{e2e['e2e_rate'] / full:>13.2f}x")
    print("goals (issue #2): parse+map+validate >= 1,500 msg/s; AA p99 < 20 ms at 200 msg/s")
    met = sum(e2e[k] < 20 for k in ("paced_p99", "paced2_p99"))
    print(f"  parse+map+validate: {'met' if full >= 1500 else 'NOT met'}; "
          f"paced AA p99 < 20 ms: met in {met} of 2 runs")
    if args.only == "e2e":
        return 0
    if args.lookalikes:
        from bench.lookalikes import run_and_report

        run_and_report(args.lookalikes)
    if args.ds_alerts:
        from bench.defisante import bench_defisante, report

        report(bench_defisante(args.ds_background, args.ds_alerts, args.ds_rate))
    if args.ds_backfill:
        from bench.defisante import bench_during_backfill, report_backfill

        report_backfill(bench_during_backfill(args.ds_backfill))
    if args.load_seconds:
        from bench.load import run as run_load

        run_load(300.0, args.load_seconds, 20)
    run_issue14(args, set(ISSUE14))
    return 0


ISSUE14 = ("peer", "site", "backfill", "scale")  # scale: issue #15 (bench/scale.py)


def run_issue14(args: argparse.Namespace, parts: set[str]) -> None:
    """Issue #14's figures (bench/peer.py, bench/site.py, bench/backfill.py), each headed by the load."""
    from bench.procs import load_note

    if "peer" in parts and args.peer_messages:
        from bench.peer import run as run_peer

        print(f"\n[peer] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load_note()}")
        run_peer(args.peer_messages, args.peer_repeat)
        print(f"  ({load_note()} at the end)")
    if "site" in parts and args.site_seconds:
        from bench.site import run as run_site

        print(f"\n[site] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load_note()}")
        run_site(args.site_rate, args.site_seconds, args.site_connections)
        print(f"  ({load_note()} at the end)")
    if "backfill" in parts and args.backfill:
        from bench.backfill import run as run_backfill

        print(f"\n[backfill] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load_note()}")
        run_backfill(args.backfill)
        print(f"  ({load_note()} at the end)")
    if "scale" in parts and args.scale_messages:
        from bench.scale import section

        section(args.scale_messages)


if __name__ == "__main__":
    raise SystemExit(main())

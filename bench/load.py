"""Sustained load: 300 messages/s for 5 minutes over 20 MLLP connections (embedded defaults).

A real ``pivot serve`` process. Each connection sends its share of ER registrations at a fixed
pace (one every 20/300 s, waiting for each ACK, as a real sender does); if an ACK is late the next
message goes at once, so the offered load is kept up rather than silently lowered. Reported:
the rate achieved, AA latency p50/p99 per minute and overall, the gateway's resident memory
(parent + listener child) at start, after the first minute and at the end, and — once the
workers have caught up — that every message AA'd is in the FHIR store exactly once (one
Encounter per visit number, counted by the store) with no dead letter: zero loss.
``python -m bench.load [--rate 300] [--seconds 300] [--connections 20]``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.__main__ import pct, wait_stored
from bench.serve import free_port, read_ack, rss_kb, start_serve
from gateway.samples import er_message

START, END = b"\x0b", b"\x1c\x0d"


def _sender(port: int, first: int, step: int, count: int, pace_s: float, first_at: float,
            out: list[tuple[float, float, str]]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    next_at = first_at
    for k in range(count):
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        next_at += pace_s
        raw = er_message(first + k * step)
        sent = time.perf_counter()
        sock.sendall(START + raw + END)
        ack = read_ack(sock, buf)
        code = ack.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in ack else "??"
        out.append((sent, time.perf_counter() - sent, code))
    sock.close()


def run(rate: float, seconds: float, connections: int) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="pivot-load-"))
    http, mllp = free_port(), free_port()
    proc = start_serve(data, http, mllp)
    total = int(rate * seconds)
    per_conn = total // connections
    results: list[list[tuple[float, float, str]]] = [[] for _ in range(connections)]
    rss: dict[str, int] = {"start": rss_kb(proc.pid)}
    try:
        t0 = time.perf_counter() + 0.05  # connection i starts i/rate s later: one message every 1/rate s
        threads = [threading.Thread(target=_sender, args=(mllp, i, connections, per_conn, connections / rate,
                                                          t0 + i / rate, results[i])) for i in range(connections)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(1)
            elapsed = time.perf_counter() - began
            if "1 min" not in rss and elapsed >= 60:
                rss["1 min"] = rss_kb(proc.pid)
        duration = time.perf_counter() - began
        rss["end"] = rss_kb(proc.pid)
        rows = [r for rs in results for r in rs]
        acked = sum(1 for _, _, c in rows if c == "AA")
        drain = wait_stored(http, acked)
        stored = httpx.get(f"http://127.0.0.1:{http}/fhir/Encounter", params={"_summary": "count"},
                           timeout=30).json().get("total", 0)
        dead = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=30).text.count("pivot_deadletters_total{")
        rss["drained"] = rss_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    lat = [d for _, d, _ in rows]
    print(f"\nPivot load — {rate:.0f} msg/s offered for {seconds:.0f} s over {connections} MLLP connections")
    print(f"{'sent / AA':<44}{len(rows):>10,} / {acked:,}")
    print(f"{'achieved rate (msg/s)':<44}{len(rows) / duration:>10.1f}")
    worst = max(lat) * 1000
    print(f"{'AA latency p50 / p99 / max (ms)':<44}{pct(lat, 0.5):>10.1f} / {pct(lat, 0.99):.1f} / {worst:.1f}")
    last = max(0, int((seconds - 1) // 60))
    for minute in range(last + 1):  # the last message or two (a late ACK) count in the last minute
        part = [d for s, d, _ in rows if min(int((s - rows[0][0]) // 60), last) == minute]
        if part:
            print(f"{f'  minute {minute + 1}: p50 / p99 (ms)':<44}{pct(part, 0.5):>10.1f} / {pct(part, 0.99):.1f}")
    print(f"{'RSS start / 1 min / end / drained (MB)':<44}" + " / ".join(
        f"{rss.get(k, 0) / 1024:.0f}" for k in ("start", "1 min", "end", "drained")))
    growth = (rss["end"] - rss.get("1 min", rss["start"])) / 1024
    print(f"{'memory growth after the first minute (MB)':<44}{growth:>10.1f}")
    print(f"{'stored Encounters / AA (zero loss when equal)':<44}{stored:>10,} / {acked:,}")
    print(f"{'dead-letter series in /metrics':<44}{dead:>10}")
    print(f"{'workers caught up after the last ACK (s)':<44}{drain:>10.1f}")
    return {"sent": float(len(rows)), "acked": float(acked), "stored": float(stored), "p99": pct(lat, 0.99)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load")
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--connections", type=int, default=20)
    args = ap.parse_args()
    out = run(args.rate, args.seconds, args.connections)
    return 0 if out["stored"] == out["acked"] == out["sent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

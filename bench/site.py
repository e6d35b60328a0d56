"""MLLP ACK latency measured the way a site sends (issue #14).

An independent client, python-hl7's ``hl7.client.MLLPClient`` (blocking: send, then wait for the
ACK), ``connections`` connections together sending ``rate`` messages/s evenly paced (connection k
sends at t0 + k/rate + j·connections/rate; a send that falls behind goes at once, so the offered
load is kept) for ``seconds``, to a **fresh** ``pivot serve`` (embedded defaults, new data dir) per
mode. The messages: ER A04s of ``gateway.samples.site_message`` (~1.4 KB: PD1, NK1, PV2, two DG1,
a Z-segment), a different person each. Two modes, each on its own fresh gateway:

- original mode: MSH-15/16 empty, one AA per message;
- enhanced mode: MSH-15 = AL, MSH-16 = NE, one commit ACK CA per message (no application ACK:
  with MSH-16 = AL the application ACK arrives as a message of its own on the connection, which a
  send-and-wait client such as MLLPClient would read as the answer to its next message).

Latency: from just before ``send_message`` to its return (the ACK read). Printed per mode: p50,
p99, max, ACK codes, the achieved rate. Goal (issue #14): AA/CA p99 < 20 ms at 200 msg/s.
``python -m bench --only site`` (``--site-seconds``, ``--site-rate``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.serve import free_port, start_serve
from gateway.samples import site_message

MODES = (("original (MSH-15/16 empty) -> AA", ("", "")), ("enhanced (MSH-15=AL, MSH-16=NE) -> CA", ("AL", "NE")))
GOAL_P99_MS = 20.0
FIRST_PERSON = 2_000_000  # people of their own: not those of bench.peer or bench.backfill


@dataclass(frozen=True)
class Sample:
    sent_at: float
    seconds: float
    code: str


@dataclass(frozen=True)
class ModeResult:
    name: str
    samples: list[Sample]
    duration: float

    def latencies_ms(self) -> list[float]:
        return sorted(s.seconds * 1000 for s in self.samples)

    def pct(self, p: float) -> float:
        lat = self.latencies_ms()
        return lat[min(len(lat) - 1, int(len(lat) * p))] if lat else float("nan")


def _ack_code(reply: bytes) -> str:
    return reply.split(b"MSA|", 1)[1][:2].decode(errors="replace") if b"MSA|" in reply else "??"


def _sender(port: int, msgs: list[bytes], first_at: float, pace_s: float, out: list[Sample]) -> None:
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", port) as client:
        next_at = first_at
        for raw in msgs:
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_at += pace_s
            sent = time.perf_counter()
            reply = client.send_message(raw)
            out.append(Sample(sent, time.perf_counter() - sent, _ack_code(reply)))


def run_mode(name: str, ack_modes: tuple[str, str], rate: float, seconds: float, connections: int) -> ModeResult:
    total = int(rate * seconds)
    msgs = [site_message(FIRST_PERSON + k, ack_modes=ack_modes) for k in range(total)]
    data = Path(tempfile.mkdtemp(prefix="pivot-bench-site-"))
    http, mllp = free_port(), free_port()
    proc = start_serve(data, http, mllp)
    results: list[list[Sample]] = [[] for _ in range(connections)]
    try:
        t0 = time.perf_counter() + 0.1
        threads = [threading.Thread(target=_sender, args=(mllp, msgs[k::connections], t0 + k / rate,
                                                          connections / rate, results[k]))
                   for k in range(connections)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        duration = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    return ModeResult(name, sorted((s for r in results for s in r), key=lambda s: s.sent_at), duration)


def run(rate: float = 200.0, seconds: float = 30.0, connections: int = 4) -> list[ModeResult]:
    out = [run_mode(name, modes, rate, seconds, connections) for name, modes in MODES]
    print(f"\nMLLP ACK latency the way a site sends — python-hl7 MLLPClient, {connections} connections, "
          f"{rate:.0f} msg/s evenly paced for {seconds:.0f} s, fresh gateway per mode, ER A04 site_message")
    print(f"{'mode':<40}{'sent':>7}{'msg/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  ACK codes")
    for r in out:
        codes = sorted({s.code for s in r.samples})
        tally = ", ".join(f"{c} {sum(s.code == c for s in r.samples):,}" for c in codes)
        print(f"{r.name:<40}{len(r.samples):>7,}{len(r.samples) / r.duration:>8.1f}{r.pct(0.5):>9.1f}"
              f"{r.pct(0.99):>9.1f}{r.latencies_ms()[-1]:>9.1f}  {tally}")
    met = [r.pct(0.99) < GOAL_P99_MS for r in out]
    print(f"  goal (issue #14): p99 < {GOAL_P99_MS:.0f} ms in both modes: "
          + ", ".join(f"{r.name.split()[0]} {'met' if m else 'NOT met'}" for r, m in zip(out, met, strict=True)))
    return out

"""Scale-out (issue #15): end-to-end throughput of one and of two ``pivot serve`` on Kafka + PostgreSQL.

One run starts its own tansu broker (tests/kafka_fixtures.BrokerProcess) and its own PostgreSQL
cluster (tests/pg_fixtures.start_pg), then feeds the same simulated multi-site feed (``gateway.
simulate``: four MLLP connections per site, a person's messages on one of them, each sent after
the previous one's ACK) to one instance, then to two (the connections spread over them), each time
with a fresh topic prefix, consumer group and database. Figures per run: the AA rate (sent → acknowledged) and
the end-to-end rate (sent → every visit is an Encounter in *every* instance's /fhir: each instance's
read store takes every ``fhir.*`` record, the mapping work is what the instances share). The load
of the machine (other jobs) is printed beside them: compare the two runs of one invocation only.

``python -m bench --only scale [--scale-messages N]``.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections import defaultdict
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx

from bench.procs import load_note
from bench.serve import free_port, read_ack, start_serve
from gateway.simulate import simulate

START, END = b"\x0b", b"\x1c\x0d"


def feed(messages: int, per_site: int = 4) -> tuple[dict[str, list[bytes]], int]:
    """The first ``messages`` of a simulated feed on ``per_site`` connections per sending site (a
    person's site record, PID-3's first identifier, always on the same one: its order is kept), and
    the number of visits it opens."""
    sim = simulate(sites=3, people=max(1000, messages // 2), days=120, seed=15)
    raws = [raw for _at, raw in sim.messages[:messages]]
    conns: dict[str, list[bytes]] = defaultdict(list)
    visits: set[bytes] = set()
    for raw in raws:
        segments = raw.split(b"\r")
        fields = {s.split(b"|", 1)[0]: s.split(b"|") for s in segments if s}
        record = fields[b"PID"][3].split(b"~")[0].split(b"^")[0]
        conns[f"{fields[b'MSH'][3].decode()}/{zlib.crc32(record) % per_site}"].append(raw)
        if b"PV1" in fields:
            visits.add(fields[b"PV1"][19].split(b"^")[0])
    return dict(conns), len(visits)


def _site(port: int, msgs: list[bytes], codes: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buf = bytearray()
        for raw in msgs:
            sock.sendall(START + raw + END)
            ack = read_ack(sock, buf)
            codes.append(ack.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in ack else "??")


def _encounters(http: int) -> int:
    try:
        resp = httpx.get(f"http://127.0.0.1:{http}/fhir/Encounter", params={"_summary": "count"}, timeout=10)
        return int(resp.json().get("total", 0))
    except (httpx.HTTPError, ValueError):
        return 0


def run_once(instances: int, sites: dict[str, list[bytes]], visits: int, bootstrap: str, state_url: str,
             timeout_s: float = 900.0) -> dict[str, float]:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    env = {"PIVOT_KAFKA_BOOTSTRAP": bootstrap, "PIVOT_KAFKA_TOPIC_PREFIX": prefix,
           "PIVOT_KAFKA_GROUP_ID": prefix.rstrip("."), "PIVOT_STATE_URL": state_url}
    root = Path(tempfile.mkdtemp(prefix="pivot-bench-scale-"))
    procs: list[tuple[Popen[bytes], int, int]] = []
    try:
        for n in range(instances):
            http, mllp = free_port(), free_port()
            procs.append((start_serve(root / f"i{n}", http, mllp, env), http, mllp))
        time.sleep(8.0)  # the group settles (each instance joined, partitions assigned) before the clock starts
        codes: list[str] = []
        threads = [threading.Thread(target=_site, args=(procs[k % instances][2], msgs, codes))
                   for k, msgs in enumerate(sites.values())]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        acked = time.perf_counter() - t0
        deadline = time.monotonic() + timeout_s
        while min(_encounters(http) for _p, http, _m in procs) < visits and time.monotonic() < deadline:
            time.sleep(0.2)
        done = time.perf_counter() - t0
        stored = min(_encounters(http) for _p, http, _m in procs)
    finally:
        for proc, _h, _m in procs:
            proc.terminate()
        for proc, _h, _m in procs:
            proc.wait(30)
        shutil.rmtree(root, ignore_errors=True)
    sent = sum(len(m) for m in sites.values())
    return {"sent": sent, "aa": codes.count("AA"), "ack_rate": sent / acked, "e2e_rate": sent / done,
            "e2e_s": done, "stored": stored, "visits": visits}


def run(messages: int) -> dict[int, dict[str, float]]:
    """Both runs, printed; returns instances → figures."""
    import pytest

    from tests.kafka_fixtures import BrokerProcess
    from tests.pg_fixtures import start_pg

    try:
        broker = BrokerProcess().start()
        pg = start_pg()
    except pytest.skip.Exception as exc:  # no tansu or no PostgreSQL binaries here
        print(f"  scale-out skipped: {exc}")
        return {}
    sites, visits = feed(messages)
    out: dict[int, dict[str, Any]] = {}
    try:
        for instances in (1, 2):
            out[instances] = run_once(instances, sites, visits, broker.bootstrap, pg.create_database())
            print(f"  {load_note()} after the {instances}-instance run")
    finally:
        broker.kill()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
    report(out)
    return out


def report(out: dict[int, dict[str, float]]) -> None:
    print(f"{'instances (tansu + PostgreSQL, same feed)':<44}{'AA msg/s':>10}{'end-to-end msg/s':>18}"
          f"{'AA':>8}{'stored/visits':>15}")
    for instances, f in sorted(out.items()):
        print(f"{instances:<44}{f['ack_rate']:>10,.0f}{f['e2e_rate']:>18,.0f}{f['aa']:>8,.0f}"
              f"{f['stored']:>8,.0f}/{f['visits']:,.0f}")
    if 1 in out and 2 in out:
        print(f"  two / one instance, end to end: {out[2]['e2e_rate'] / out[1]['e2e_rate']:.2f}x "
              "(issue #15: two must not be slower than one on 2 cores)")


def section(messages: int) -> None:
    """``python -m bench``'s part (``--only scale``, ``--scale-messages N``)."""
    from datetime import UTC, datetime

    print(f"\n[scale] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {messages:,} messages, {load_note()}")
    run(messages)

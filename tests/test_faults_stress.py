"""Faults under load, on real `pivot serve` processes.

1. The whole gateway (its process group: any child it spawns, e.g. an MLLP listener process, dies
   with it) is SIGKILLed while 10 MLLP connections stream 5,000 messages; nothing survives holding
   the ports, the restart binds them again, the senders resend what got no AA, and every message
   is then in the FHIR store exactly once (one Encounter per visit, one version), no dead letter.
2. The external FHIR server (sekmet, PIVOT_FHIR_BASE_URL) is down for 60 s while messages keep
   arriving: every message is still AA'd, and once the server is back (restarted on its own data)
   everything is delivered exactly once within a bounded time, no dead letter.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.eventlog.embedded import EmbeddedLog
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import Settings
from gateway.topics import DEADLETTER, FHIR_TYPES
from tests.conftest import ServeProcess
from tests.e2e_helpers import FrameReader, ack_field, port_bindable, search, visit_counts, wait_for
from tests.fhir_server_fixtures import SekmetServer

TOTAL = 5_000
CONNECTIONS = 10
KILL_AFTER_AAS = 2_000
OUTAGE_S = 60.0
RATE_PER_S = 10.0  # the ER feed during the FHIR outage test
FEED_AFTER_S = 3.0  # the feed goes on this long after the FHIR server is back
DRAIN_MARGIN_S = 40.0  # delivering the outage's backlog (~650 bundles at ~100/s), on a loaded CI machine


# -- processes ------------------------------------------------------------------------------------
class GroupServe(ServeProcess):
    """`pivot serve` as the leader of its own session: ``crash()`` SIGKILLs the whole process group."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, env)
        self.new_session = True
        self.held: set[int] = set()  # the processes of the last crash()

    def start(self, timeout_s: float = 30.0) -> GroupServe:
        super().start(timeout_s)
        return self

    def crash(self) -> set[int]:
        """SIGKILL the process group at once (a machine-level crash); the pids it held."""
        assert self.proc is not None
        pgid = self.proc.pid
        self.held = {pgid} | descendants(pgid) | _group(pgid)  # a child in another group is counted too
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(10)
        return self.held

    def survivors(self, timeout_s: float = 10.0) -> dict[int, str]:
        """Processes of the crashed gateway still alive after ``timeout_s`` (pid → command line)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while (alive := _alive(self.held | _group(self.proc.pid))) and time.monotonic() < deadline:
            time.sleep(0.05)
        return {pid: _cmdline(pid) for pid in alive}

    def stop(self) -> None:
        super().stop()
        if self.proc is not None:  # nothing of the group may outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in _alive(self.held):  # a child of ours that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def group_serve(tmp_path: Path) -> Iterator[Callable[..., GroupServe]]:
    started: list[GroupServe] = []

    def make(env: dict[str, str] | None = None) -> GroupServe:
        proc = GroupServe(tmp_path / "var", {"PIVOT_LOG_LEVEL": "WARNING", **(env or {})})
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, process group, state) of every process (Linux /proc)."""
    out: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp …
        out[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def descendants(pid: int) -> set[int]:
    procs = _processes()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, _g, _s) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def _group(pgid: int) -> set[int]:
    return {p for p, (_pp, grp, _s) in _processes().items() if grp == pgid}


def _alive(pids: set[int]) -> set[int]:
    procs = _processes()
    return {p for p in pids if p in procs and procs[p][2] != "Z"}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _listening(port: int) -> bool:
    """Whether any socket of this network namespace listens on TCP ``port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


# -- an MLLP sender (one connection, one message at a time, like a real feed) ----------------------
class Sender(threading.Thread):
    """Sends ``msgs`` in order on one connection; ``sent`` = how many got an AA (the rest: resend)."""

    def __init__(self, port: int, msgs: list[bytes], pace_s: float = 0.0, ack_timeout_s: float = 30.0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.msgs = msgs
        self.pace_s = pace_s
        self.stop = stop or threading.Event()
        self.ack_timeout_s = ack_timeout_s
        self.acked: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.ack_latencies: list[float] = []
        self.dropped: BaseException | None = None

    @property
    def sent(self) -> int:
        return len(self.acked)

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                reader = FrameReader(sock)
                started = time.monotonic()
                for n, raw in enumerate(self.msgs):
                    if self.stop.wait(max(0.0, started + n * self.pace_s - time.monotonic())):
                        return
                    at = time.monotonic()
                    sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
                    ack = reader.frame(timeout_s=self.ack_timeout_s)
                    self.ack_latencies.append(time.monotonic() - at)
                    code, control_id = ack_field(ack, "MSA", 1), ack_field(ack, "MSA", 2)
                    if code != "AA":
                        self.refused.append((control_id, code))
                        return
                    self.acked.append(control_id)
        except OSError as exc:  # ConnectionError, TimeoutError: the gateway went away
            self.dropped = exc


def _feed(n: int) -> tuple[list[bytes], dict[str, str]]:
    """n ER registrations with distinct control ids, and control id → visit number (PV1-19)."""
    msgs = [er_message(i) for i in range(n)]
    visits = {}
    for raw in msgs:
        msg = parse(raw)
        pv1 = msg.first("PV1")
        assert pv1 is not None
        visits[msg.control_id] = pv1.get(19).split("^")[0]
    assert len(set(visits.values())) == n
    return msgs, visits


def _deadletters(data_dir: Path) -> list[Any]:
    """Dead letters in a stopped gateway's embedded log."""
    log = EmbeddedLog(data_dir / "log.sqlite")
    try:
        return log.read_all(Settings().topic(DEADLETTER))
    finally:
        log.close()


# -- the embedded FHIR store, through /fhir ------------------------------------------------------
def _total(base: str, path: str, **params: str) -> int:
    return int(search(base, path, **params)["total"])


def _visit_counts(fhir_base: str) -> Counter[str]:
    """Encounters per visit number, paging through every Encounter of a FHIR server."""
    return Counter(visit_counts(fhir_base))


@pytest.mark.slow
def test_gateway_sigkilled_under_10_connections_loses_and_duplicates_nothing(
        group_serve: Callable[..., GroupServe]) -> None:
    msgs, visits = _feed(TOTAL)
    gw = group_serve().start()
    senders = [Sender(gw.mllp_port, msgs[k::CONNECTIONS]) for k in range(CONNECTIONS)]
    started = time.monotonic()
    for s in senders:
        s.start()
    wait_for(lambda: sum(s.sent for s in senders) >= KILL_AFTER_AAS, timeout_s=120, interval_s=0.005)
    held = gw.crash()
    killed_at = time.monotonic()
    for s in senders:
        s.join(30)
    acked_before = sum(s.sent for s in senders)
    print(f"\n{acked_before} AAs in {killed_at - started:.1f}s over {CONNECTIONS} connections "
          f"({acked_before / (killed_at - started):.0f} msg/s), then SIGKILL of process group {held}")
    assert not any(s.is_alive() for s in senders)
    assert all(not s.refused for s in senders), [s.refused for s in senders]
    assert KILL_AFTER_AAS <= acked_before < TOTAL
    assert any(s.dropped is not None for s in senders), "the senders should have seen the connections drop"

    # the crash left nothing behind: no process of the group, no listener on the gateway's ports
    assert gw.survivors() == {}, "processes of the gateway survived the SIGKILL of its process group"
    for port in (gw.http_port, gw.mllp_port):
        assert not _listening(port), f"something still listens on {port} after the SIGKILL"
        assert port_bindable(port), f"port {port} cannot be bound again"

    gw.start()  # same data dir, same ports
    recovered_at = time.monotonic()
    stored_before = _total(gw.base, "Encounter", _summary="count")
    print(f"restart: ready {recovered_at - killed_at:.1f}s after the SIGKILL; {stored_before} Encounters stored")
    assert _listening(gw.http_port)
    assert _listening(gw.mllp_port)
    resend = [Sender(gw.mllp_port, s.msgs[s.sent:]) for s in senders]  # what got no AA, in order
    for s in resend:
        s.start()
    for s in resend:
        s.join(120)
    assert [(s.dropped, s.refused) for s in resend] == [(None, [])] * CONNECTIONS
    assert sum(s.sent for s in resend) == TOTAL - acked_before
    acked = [cid for s in senders + resend for cid in s.acked]
    assert sorted(acked) == sorted(visits)  # every message has now had an AA

    wait_for(lambda: _total(gw.base, "Encounter", _summary="count") >= TOTAL, timeout_s=120, interval_s=0.25)
    stored_at = time.monotonic()
    print(f"resent {TOTAL - acked_before}; all {TOTAL} Encounters stored {stored_at - recovered_at:.1f}s "
          "after the restart")
    time.sleep(1.0)  # anything late (a second version, another Encounter) would land by now
    counts = _visit_counts(f"{gw.base}/fhir")
    assert set(counts) == set(visits.values())  # every visit, AA'd before or after the crash, is there
    assert max(counts.values()) == 1  # once
    assert _total(gw.base, "Encounter", _summary="count") == TOTAL
    assert _total(gw.base, "Patient", _summary="count") == TOTAL
    for rtype in FHIR_TYPES:  # one version of every resource: neither the crash nor the resends wrote twice
        assert _total(gw.base, f"{rtype}/_history", _count="0") == _total(gw.base, rtype, _summary="count"), rtype
    gw.stop()
    assert _deadletters(gw.data_dir) == []


@pytest.mark.slow
def test_fhir_server_down_60s_then_everything_delivered_once(
        group_serve: Callable[..., GroupServe], sekmet_server: SekmetServer) -> None:
    srv = sekmet_server
    # The delivery client's backoff is full jitter capped at PIVOT_FHIR_RETRY_MAX_S (default 15 s): the
    # first attempt after the server is back may come up to the cap later; then the backlog drains.
    catch_up_bound_s = Settings().fhir_retry_max_s + DRAIN_MARGIN_S
    msgs, visits = _feed(int(RATE_PER_S * (OUTAGE_S + 60)))
    gw = group_serve(env={"PIVOT_FHIR_BASE_URL": srv.base_url}).start()
    stop = threading.Event()
    feed = Sender(gw.mllp_port, msgs, pace_s=1 / RATE_PER_S, ack_timeout_s=10, stop=stop)
    feed.start()
    try:
        wait_for(lambda: srv.count("Encounter") >= 30, timeout_s=60, interval_s=0.1)  # delivery is flowing
        srv.kill()  # SIGKILL: down, connections refused; its data (SQLite) stays in its data dir
        down_at, sent_at_down = time.monotonic(), feed.sent
        time.sleep(OUTAGE_S)
        sent_in_outage = feed.sent - sent_at_down
        srv.start()  # same port, same data dir
        up_at = time.monotonic()
        delivered_at_down = srv.count("Encounter")
        first: float | None = None
        while True:  # the feed goes on a little while the backlog drains, then stops
            now = time.monotonic()
            if now >= up_at + FEED_AFTER_S and not stop.is_set():
                stop.set()
                feed.join(15)
            delivered = srv.count("Encounter")
            if first is None and delivered > delivered_at_down:
                first = now
            if stop.is_set() and delivered >= feed.sent:
                break
            assert now < up_at + catch_up_bound_s, \
                f"{delivered}/{feed.sent} delivered {catch_up_bound_s:.0f}s after the restart"
            time.sleep(0.2)
        done = time.monotonic()
    finally:
        stop.set()
        feed.join(15)
    assert feed.dropped is None
    assert feed.refused == []
    total = feed.sent
    print(f"\n{sent_in_outage} messages AA'd during the {OUTAGE_S:.0f}s outage (max ACK latency "
          f"{max(feed.ack_latencies):.2f}s), {total} in all; {delivered_at_down} delivered before it")
    assert sent_in_outage >= 0.8 * RATE_PER_S * OUTAGE_S  # the intake never waited for the FHIR server
    waits = [float(w) for w in re.findall(r"FHIR delivery: .*; retry \d+ in ([0-9.]+)s", gw.logs())]
    print(f"server back after {up_at - down_at:.1f}s; first new delivery {(first or done) - up_at:.1f}s later, "
          f"all {total} delivered {done - up_at:.1f}s after the restart; {len(waits)} delivery retries, "
          f"longest wait {max(waits, default=0.0):.1f}s")
    time.sleep(1.0)  # a late duplicate or second version would land by now
    counts = _visit_counts(srv.base_url)
    assert counts == Counter({visits[cid]: 1 for cid in feed.acked})  # every AA'd visit, once
    for rtype in ("Patient", "Encounter", "Condition", "Provenance", "RelatedPerson", "Location", "Organization",
                  "Practitioner"):
        assert srv.history_total(rtype) == srv.count(rtype), rtype  # one version each: nothing written twice
    assert srv.count("Patient") == total
    gw.stop()
    assert _deadletters(gw.data_dir) == []

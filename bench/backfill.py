"""Backfill of a simulated CSSS year (issue #14): ~400,000 ER ADT messages of three sites through
``pivot ingest`` into a fresh ``pivot serve`` (embedded defaults, workers on), timed until stored.

The year: people of ``gateway.samples.site_person`` (a valid NAM each), most with one ER visit, a
fifth with two, a tenth with three and 3 % frequent users with 5–16; a visit is at the person's
home site (85 %) or another of the three (HSA, HLA, HSJ); each visit is an A04, an A08 (30 %: a new
cell phone) while in the ER and an A03 90 min–15 h later, all ``site_message`` (~1.4 KB), in time
order, over the year that ended a week ago (older than the alerts' ``max_age_hours``).

Before the backfill, five of its frequent users are enrolled in Défi Santé (one old A04 each, then
``$defi-sante-enroll``): their history must raise no alert. Measured: the ingest command's wall
time, the time until the store holds every Patient and every visit is finished (each visit's A03
applied), messages/s, the peak RSS (VmHWM) of every process (gateway, listener child, ingest and
their children), and checked: Patients and Encounters at /fhir vs expected, no dead letter, no
Communication and no record on the alerts topic. ``python -m bench --only backfill --backfill N``
(default 400,000); the figure for 400,000 is extrapolated linearly when N is smaller.

Memory: the year is planned as small events (~130 MB for 400,000 in this process, not measured) and
its messages are encoded one at a time straight into the feed file (:func:`write_feed`), never held
in a list; ``pivot ingest`` streams that file (connectors/files.py) and maps in ``--jobs`` worker
processes (default: the CPU count), whose peak RSS is listed with the others (children of ingest).
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import httpx

from bench.peer import count, run_ingest, wait_for
from bench.procs import PeakRss, cpu_s, reaped_cpu_s
from bench.serve import free_port, start_serve
from gateway.identity.keys import nam_person_id
from gateway.samples import CSSS_SITES, site_message, site_person

FIRST_PERSON = 1_000_000  # people of their own (bench.peer and bench.site use others)
SEED_VISIT = 90_000_000  # the enrolled clients' old visits
ENROLLED = 5
YEAR_MESSAGES = 400_000
GOAL_S, GOAL_RSS_MB = 300.0, 1024.0


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    person: int
    site: int
    visit: int
    trigger: str
    arrived: datetime


@dataclass(frozen=True)
class Year:
    events: list[Event]
    people: int
    visits: int
    frequent: list[int]  # persons with 5+ visits, in creation order


def _visits(rng: random.Random) -> int:
    r = rng.random()
    return rng.randint(5, 16) if r < 0.03 else 3 if r < 0.13 else 2 if r < 0.33 else 1


def year(messages: int, end: datetime, seed: int = 14) -> Year:
    """People and their visits until at least ``messages`` messages, sorted by time."""
    rng = random.Random(seed)  # reproducible synthetic data
    start = end - timedelta(days=365)
    events: list[Event] = []
    frequent: list[int] = []
    person, visit = FIRST_PERSON, 0
    while len(events) < messages:
        home, count_ = person % len(CSSS_SITES), _visits(rng)
        if count_ >= 5:
            frequent.append(person)
        for _ in range(count_):
            site = home if rng.random() < 0.85 else rng.randrange(len(CSSS_SITES))
            arrived = start + timedelta(minutes=rng.randint(0, 364 * 24 * 60))
            stay = rng.randint(90, 900)
            events.append(Event(arrived, person, site, visit, "A04", arrived))
            if rng.random() < 0.3:
                events.append(Event(arrived + timedelta(minutes=rng.randint(10, stay - 10)), person, site, visit,
                                    "A08", arrived))
            events.append(Event(arrived + timedelta(minutes=stay), person, site, visit, "A03", arrived))
            visit += 1
        person += 1
    events.sort(key=lambda e: (e.at, e.visit))
    return Year(events, person - FIRST_PERSON, visit, frequent)


def encode(events: Iterator[Event] | list[Event]) -> Iterator[bytes]:
    for e in events:
        yield site_message(e.person, trigger=e.trigger, site=e.site, visit=e.visit, when=e.at, arrived=e.arrived)


def write_feed(path: Path, raws: Iterator[bytes]) -> int:
    size = 0
    with path.open("wb") as fh:
        for raw in raws:
            fh.write(raw + b"\n")
            size += len(raw) + 1
    return size


def _enroll(base: str, data: Path, http: int, mllp: int, people: list[int], before: datetime) -> int:
    """One old A04 per person through ``pivot ingest``, then ``$defi-sante-enroll``; how many enrolled."""
    seed = data.parent / f"{data.name}-seed.hl7"
    write_feed(seed, (site_message(p, site=p % len(CSSS_SITES), visit=SEED_VISIT + k, when=before)
                      for k, p in enumerate(people)))
    run_ingest(data, [seed], http, mllp).communicate()
    seed.unlink()
    enrolled = 0
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "caseManager", "valueReference": {"reference": "Practitioner/bench-cm"}}]}
    for p in people:
        url = f"{base}/fhir/Patient/{nam_person_id(site_person(p).nam)}"
        if wait_for(partial(_readable, url), 120):
            reply = httpx.post(f"{url}/$defi-sante-enroll", json=body, timeout=60)
            enrolled += reply.status_code < 300
    return enrolled


def _readable(url: str) -> bool:
    return httpx.get(url, timeout=30).status_code == 200


def _log_count(data: Path, topic: str) -> int:
    """Records of ``topic`` in the embedded log (-1 when it cannot be read)."""
    try:
        conn = sqlite3.connect(f"file:{data / 'log.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            return int(conn.execute("SELECT count(*) FROM records WHERE topic = ?", (topic,)).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return -1


@dataclass(frozen=True)
class Result:
    messages: int
    people: int
    visits: int
    feed_mb: float
    ingest_s: float
    stored_s: float
    done: bool
    patients: int
    encounters: int
    finished: int
    deadletters: int
    enrolled: int
    communications: int
    alert_records: int
    summary: str
    peaks: list[tuple[int, str, float]]
    ingest_cpu_s: float
    gateway_cpu_s: float


def run(messages: int = YEAR_MESSAGES) -> Result:
    end = datetime.now().replace(microsecond=0) - timedelta(days=7)
    plan = year(messages, end)
    data = Path(tempfile.mkdtemp(prefix="pivot-bench-backfill-"))
    feed = data.parent / f"{data.name}.hl7"
    size = write_feed(feed, encode(plan.events))
    http, mllp = free_port(), free_port()
    base = f"http://127.0.0.1:{http}"
    proc = start_serve(data, http, mllp)
    try:
        with PeakRss(proc.pid) as peaks:
            enrolled = _enroll(base, data, http, mllp, plan.frequent[:ENROLLED], end - timedelta(days=400))
            comms_before = count(base, "Communication")
            t, reaped, served = time.perf_counter(), reaped_cpu_s(), cpu_s(proc.pid)
            ingest = run_ingest(data, [feed], http, mllp)
            peaks.watch(ingest.pid)
            out, _ = ingest.communicate()
            ingest_s, ingest_cpu = time.perf_counter() - t, reaped_cpu_s() - reaped
            done = wait_for(lambda: count(base, "Patient") >= plan.people
                            and count(base, "Encounter", status="finished") >= plan.visits,
                            max(600.0, messages / 20), every=1.0)
            stored_s, gateway_cpu = time.perf_counter() - t, cpu_s(proc.pid) - served
            time.sleep(2)  # anything still to come (an alert, a dead letter) has had its chance
            peaks.sample()
            result = Result(len(plan.events), plan.people, plan.visits, size / 1e6, ingest_s, stored_s, done,
                            count(base, "Patient"), count(base, "Encounter"),
                            count(base, "Encounter", status="finished"),
                            _log_count(data, "pivot.deadletter"), enrolled,
                            count(base, "Communication") - comms_before, _log_count(data, "pivot.defisante.alerts"),
                            out.decode(errors="replace").strip(), peaks.report(), ingest_cpu, gateway_cpu)
    finally:
        proc.terminate()
        proc.wait(120)
        feed.unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)  # ~43 KB per message: 17 GB for a year
    report(result)
    return result


def report(r: Result) -> None:
    rate = r.messages / r.stored_s
    print(f"\nBackfill of a simulated CSSS year — {r.messages:,} messages (A04/A08/A03, 3 sites, ~"
          f"{r.feed_mb * 1e6 / r.messages:,.0f} B each, {r.feed_mb:,.0f} MB), {r.people:,} people, {r.visits:,} visits")
    print(f"{'pivot ingest (raw messages durable), s':<58}{r.ingest_s:>10.1f}   {r.summary}")
    print(f"{'ingest start -> all stored (every visit finished), s':<58}{r.stored_s:>10.1f}"
          f"{'' if r.done else '   (NOT reached: timed out)'}")
    print(f"{'messages/s (to all stored)':<58}{rate:>10.1f}")
    print(f"{'CPU ms per message: ingest process / gateway (serve + listener)':<58}"
          f"{r.ingest_cpu_s * 1000 / r.messages:>10.2f} / {r.gateway_cpu_s * 1000 / r.messages:.2f}")
    if r.messages < YEAR_MESSAGES:
        print(f"{'  a 400,000-message year at this rate, min':<58}{YEAR_MESSAGES / rate / 60:>10.1f}")
    print(f"{'Patients at /fhir / expected':<58}{r.patients:>10,} / {r.people:,}")
    print(f"{'Encounters at /fhir / expected (+ the enrolled old visits)':<58}{r.encounters:>10,} / "
          f"{r.visits + r.enrolled:,}")
    print(f"{'  finished / visits':<58}{r.finished:>10,} / {r.visits:,}")
    print(f"{'dead letters':<58}{r.deadletters:>10,}")
    print(f"{'history alerts: Communications / alerts-topic records':<58}{r.communications:>10,} / "
          f"{r.alert_records:,}   ({r.enrolled} of its frequent users enrolled beforehand)")
    print("peak RSS (VmHWM) per process, MB")
    for pid, name, mb in r.peaks:
        print(f"  {name:<56}{mb:>10.0f}   pid {pid}")
    total = sum(mb for _pid, _name, mb in r.peaks)
    print(f"  {'sum of the peaks':<56}{total:>10.0f}")
    ok = r.done and r.patients == r.people and r.encounters == r.visits + r.enrolled and r.deadletters == 0
    minutes = YEAR_MESSAGES / rate / 60
    print(f"  goals (issue #14): 400,000 in <= 5 min: {'met' if minutes <= GOAL_S / 60 else 'NOT met'} "
          f"({minutes:.1f} min); peak RSS < 1 GB (sum): {'met' if total < GOAL_RSS_MB else 'NOT met'};"
          f" nothing lost: {'yes' if ok else 'NO'}; no alert for history: "
          f"{'yes' if r.communications == 0 and r.alert_records == 0 else 'NO'}")

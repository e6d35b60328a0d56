"""Three instances give the result of one (issue #15): a multi-site feed spread round-robin over
three `pivot serve` on Kafka (tansu) sharing one PostgreSQL (PIVOT_STATE_URL), one SIGKILLed
mid-feed and restarted on its data dir, clients enrolled through one instance mid-feed, resends to
another instance; then every instance's /fhir (Patient, Encounter, Flag, Communication, compared
canonically) equals that of one `pivot serve` on the embedded defaults (embedded log, SQLite
state: one instance, no partitions) fed the same steps alongside, each arrival of an enrolled client
alerts exactly once, and no acknowledged message is lost.

The feed and the comparison are in tests/scale_helpers.py. Each message is sent after the previous
one's ACK (a site's order); before the enrollment every earlier message is processed (the
enrollment finds the Patient by NAM), so both runs enroll the same records at the same point. When
the states differ, they are kept as JSON under the test's tmp dir (the assertion names the folder).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.defisante import codes
from tests.conftest import ServeProcess
from tests.e2e_helpers import port_bindable, wait_for
from tests.kafka_fixtures import read_topic
from tests.scale_helpers import Feed, Sender, fhir_state, scenario_feed, settled, state_diff, visit_numbers
from tests.test_defisante_support import enroll_body

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
State = dict[str, dict[str, dict[str, Any]]]
SESSION_S = 6  # Kafka session timeout: a SIGKILLed instance's partitions move after it


def _env(bootstrap: str, prefix: str, state_url: str) -> dict[str, str]:
    return {"PIVOT_KAFKA_BOOTSTRAP": bootstrap, "PIVOT_KAFKA_TOPIC_PREFIX": prefix,
            "PIVOT_KAFKA_GROUP_ID": prefix.rstrip("."), "PIVOT_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_S * 1000),
            "PIVOT_STATE_URL": state_url, "PIVOT_LOG_LEVEL": "WARNING"}


def _visits_in(state: State) -> set[str]:
    return {str(i.get("value")) for enc in state["Encounter"].values() for i in enc.get("identifier") or []}


class Run:
    """Plays a feed's steps on gateways (index → ServeProcess); remembers what was acknowledged."""

    def __init__(self, gws: list[ServeProcess], anchor: datetime) -> None:
        self.gws = gws
        self.anchor = anchor
        self.down: set[int] = set()
        self.sender = Sender(lambda i: gws[i].mllp_port)
        self.sent: list[bytes] = []
        self.turn = 0

    def play(self, feed: Feed) -> None:
        try:
            for step in feed.steps:
                if step.kill is not None:
                    self._kill(step.kill)
                elif step.restart is not None:
                    self._restart(step.restart)
                elif step.enroll:
                    self._enroll(step.enroll)
                else:
                    self._send(step.raw, step.to)
        finally:
            self.sender.close()

    def _target(self, wanted: int | None) -> int:
        alive = [i for i in range(len(self.gws)) if i not in self.down]
        if wanted is not None:
            index = wanted % len(self.gws)
            return next(i % len(self.gws) for i in range(index, index + len(self.gws)) if i % len(self.gws) in alive)
        self.turn += 1
        return alive[self.turn % len(alive)]

    def _send(self, raw: bytes, wanted: int | None) -> None:
        index = self._target(wanted)
        assert self.sender.send(index, raw) == "AA"
        self.sent.append(raw)

    def _kill(self, index: int) -> None:
        if len(self.gws) > 1:
            self.sender.drop(index)
            self.gws[index].kill()
            self.down.add(index)

    def _restart(self, index: int) -> None:
        if index in self.down:
            gw = self.gws[index]
            wait_for(lambda: port_bindable(gw.mllp_port) and port_bindable(gw.http_port), timeout_s=10)
            gw.start(timeout_s=60)
            self.down.discard(index)

    def _enroll(self, nams: tuple[str, ...]) -> None:
        """Through one live instance, once it has processed every message sent so far."""
        gw = self.gws[self._target(0)]
        wanted = visit_numbers(self.sent)
        _settled_state(gw.base, wanted, 60.0)
        start = (self.anchor - timedelta(days=30)).date().isoformat()
        for nam in nams:
            found = httpx.get(f"{gw.base}/fhir/Patient", params={"identifier": f"{codes.NAM_SYSTEM}|{nam}"},
                              timeout=10).json()
            ids = sorted(e["resource"]["id"] for e in found.get("entry", []))
            assert len(ids) == 1, f"one Patient per NAM, found {len(ids)}"
            resp = httpx.post(f"{gw.base}/fhir/Patient/{ids[0]}/$defi-sante-enroll",
                              json=enroll_body("Practitioner/cm-scale", start=start), timeout=30)
            assert resp.status_code == 201, resp.text[:300]


def _settled_state(base: str, wanted: set[str], timeout_s: float, quiet_s: float = 1.5) -> State:
    """``base``'s state once it holds every visit of ``wanted`` and has not changed for ``quiet_s``."""
    state: State = settled(lambda: fhir_state(base), timeout_s=timeout_s, quiet_s=quiet_s,
                           ready=lambda s: wanted <= _visits_in(s))
    return state


def _patient_ids_in(state: State) -> set[str]:
    return {str(i.get("value")) for p in state["Patient"].values() for i in p.get("identifier") or []}


def _pid3(raw: bytes) -> set[str]:
    text = raw.decode("utf-8", errors="replace")
    pid = next(line.split("|") for line in text.split("\r") if line.startswith("PID|"))
    return {rep.split("^")[0] for rep in pid[3].split("~") if rep}


def test_three_instances_give_the_result_of_one(serve_factory: Any, kafka_broker: str, topic_prefix: str,
                                                pg_url: str, tmp_path: Path) -> None:
    anchor = datetime.now(UTC).replace(second=0, microsecond=0)
    feed = scenario_feed(anchor, kill=1)
    gws = [serve_factory(env=_env(kafka_broker, topic_prefix, pg_url), data_dir=tmp_path / f"i{n}")
           for n in range(3)]
    # the reference: one instance on the embedded defaults (embedded log, SQLite state), no fault
    one = serve_factory(env={"PIVOT_LOG_LEVEL": "WARNING"}, data_dir=tmp_path / "one")
    many, single = Run(gws, anchor), Run([one], anchor)
    with ThreadPoolExecutor(4) as pool:  # the start-ups overlap, then both runs (each waits for its ACKs)
        list(pool.map(lambda gw: gw.start(timeout_s=90), [*gws, one]))
        list(pool.map(lambda run: run.play(feed), [many, single]))
        wanted = visit_numbers(many.sent)
        # quiet longer than a session timeout: a rebalance's pause is not the end
        *states, reference = pool.map(lambda gw: _settled_state(gw.base, wanted, 90.0, quiet_s=SESSION_S + 1),
                                      [*gws, one])
    for gw in [*gws, one]:
        gw.kill()  # their state is read: no need to wait for clean stops
    events = read_topic(kafka_broker, f"{topic_prefix}defisante.alerts", timeout_ms=3000)

    # no acknowledged message lost: every visit and every identifier sent is in the store
    assert wanted <= _visits_in(states[0])
    assert set().union(*(_pid3(raw) for raw in many.sent)) <= _patient_ids_in(states[0])
    # every instance's store holds the same records, those of the single instance
    kept = _keep(tmp_path, [reference, *states])  # read them there when this fails
    for n, state in enumerate(states[1:], 1):
        differ = state_diff(states[0], state)
        assert not differ, f"instance {n} vs instance 0 (states in {kept})"
    differ = state_diff(reference, states[0])
    assert not differ, f"one instance vs three (states in {kept})"
    # each arrival of an enrolled client alerts exactly once: one er-arrival Communication per
    # arrival visit, one event on defisante.alerts per Communication
    visits = {f"Encounter/{eid}": {str(i.get("value")) for i in enc.get("identifier") or []}
              for eid, enc in states[0]["Encounter"].items()}
    alerted = Counter(v for comm in states[0]["Communication"].values() if _kind(comm) == codes.ARRIVAL
                      for v in visits[comm["encounter"]["reference"]])
    assert alerted == Counter(v for nam in feed.enrolled for v in feed.arrivals[nam])
    # (a copy identical but for produced_at is the same event again: at least once, after a crash)
    per_comm = Counter({json.dumps({**e, "produced_at": ""}, sort_keys=True): e["communication"]
                        for e in events}.values())
    assert {c: n for c, n in per_comm.items() if n != 1} == {}
    assert set(per_comm) == {f"Communication/{c}" for c in states[0]["Communication"]}


def _keep(tmp_path: Path, states: list[State]) -> Path:
    """The states as JSON files (reference.json, i0.json…) under the test's tmp dir."""
    folder = tmp_path / "states"
    folder.mkdir()
    for name, state in zip(["reference", "i0", "i1", "i2"], states, strict=False):
        (folder / f"{name}.json").write_text(json.dumps(state, indent=1, sort_keys=True, ensure_ascii=False))
    return folder


def _kind(comm: dict[str, Any]) -> str:
    return next(str(c["code"]) for cat in comm["category"] for c in cat["coding"] if c["system"] == codes.CODESYSTEM)

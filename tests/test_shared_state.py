"""Dedupe index, intake→worker handoff, alert ledger and Défi Santé register in the shared state
(gateway/eventlog/state), on both engines: two objects over one database are two instances."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.defisante import DefiSanteRules
from gateway.defisante.enrollment import EnrollRequest, enroll_resources
from gateway.defisante.service import DefiSante
from gateway.defisante.shared import register_written
from gateway.envelope import now_iso
from gateway.errors import PublishError, StoreError
from gateway.eventlog.state import handoff as handoff_mod
from gateway.eventlog.state.dedupe import open_dedupe
from gateway.eventlog.state.handoff import open_handoff
from gateway.eventlog.state.ledger import open_ledger
from gateway.eventlog.state.register import Entry, open_register
from gateway.fhirstore import FhirStore
from gateway.hl7v2 import parse
from gateway.samples import er_message
from gateway.settings import load_settings
from mappings import MapContext, MapResult, map_message
from tests.test_defisante_support import enroll_body
from tests.test_pharmacy_support import PROFILES, SYSTEMS


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    """'' (SQLite files in tmp_path) or a fresh PostgreSQL database."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def _result(cid: str) -> MapResult:
    return MapResult(resources=[{"resourceType": "Patient", "id": "p1", "name": [{"family": "Côté"}]}],
                     patient_id="p1", message_code="ADT", trigger="A04", sender="APP|FAC", control_id=cid,
                     event_time="2026-01-01T08:00:00-05:00")


def test_dedupe_is_shared_by_two_instances(state_url: str, tmp_path: Path) -> None:
    url, data = state_url, tmp_path
    first, second = open_dedupe(url, data), open_dedupe(url, data)
    try:
        assert not second.seen("APP|FAC", "C1")
        first.add("APP|FAC", "C1")
        first.add("APP|FAC", "C1")  # adding twice is harmless
        assert second.seen("APP|FAC", "C1")  # a resend reaching the other instance is a resend
        assert not second.seen("APP|OTHER", "C1")  # the sender is part of the key
        second.forget("APP|FAC", "C1")
        assert not first.seen("APP|FAC", "C1")
    finally:
        first.close()
        second.close()


def test_handoff_survives_a_worker_killed_after_taking(state_url: str, tmp_path: Path) -> None:
    url, data = state_url, tmp_path
    intake, worker, other = open_handoff(url, data), open_handoff(url, data), open_handoff(url, data)
    try:
        intake.put("APP|FAC|c1", _result("c1"))
        assert worker.pop("APP|FAC|c1") == _result("c1")  # taken by one instance's worker…
        assert other.pop("APP|FAC|c1") == _result("c1")  # …which died before its commit: the next finds it
        assert other.pop("APP|FAC|nothing") is None
        intake.put("APP|FAC|c2", _result("c2"))  # never taken (yet)
        now = int(time.time())
        assert intake.prune(now) == 0
        assert intake.prune(now + handoff_mod.TAKEN_KEEP_S + 1) == 1  # the taken one, a while later
        assert worker.pop("APP|FAC|c1") is None
        assert worker.pop("APP|FAC|c2") == _result("c2")
        intake.put("APP|FAC|c3", _result("c3"))
        assert intake.prune(now + handoff_mod.KEEP_S + 1) == 2  # never taken: a day later
    finally:
        for cache in (intake, worker, other):
            cache.close()
    if not url:
        assert oct((data / "handoff.sqlite").stat().st_mode & 0o777) == oct(0o600)


def test_spill_handoff_keeps_every_result_with_bounded_memory(tmp_path: Path) -> None:
    """One process, the intake ahead of the worker: results beyond the memory bound go to the spill
    file (none dropped); what a previous run spilled and no worker took is found after a restart."""
    cache = handoff_mod.SpillMapCache(tmp_path, memory_items=2)
    try:
        for i in range(6):
            cache.put(f"APP|FAC|c{i}", _result(f"c{i}"))
        cache.put("APP|FAC|c5", _result("c5-again"))  # the newest content wins
        assert cache.spilled == 5
        assert len(cache._memory) == 2
        assert cache.pop("APP|FAC|c4") == _result("c4")  # from the file
        assert cache.pop("APP|FAC|c0") == _result("c0")  # from memory
        assert cache.pop("APP|FAC|c0") is None
        assert cache.pop("APP|FAC|c5") == _result("c5-again")
    finally:
        cache.close()
    restarted = handoff_mod.SpillMapCache(tmp_path, memory_items=2)
    try:
        assert restarted.pop("APP|FAC|c3") == _result("c3")
        assert restarted.pop("APP|FAC|c1") is None  # it was in the first run's memory only
    finally:
        restarted.close()
    assert oct((tmp_path / "handoff.sqlite").stat().st_mode & 0o777) == oct(0o600)
    assert not (tmp_path / "none").exists()
    handoff_mod.SpillMapCache(tmp_path / "none").close()  # nothing spilled: no file
    assert not (tmp_path / "none" / "handoff.sqlite").exists()


def test_ledger_claims_once_under_two_threads(state_url: str, tmp_path: Path) -> None:
    """Two instances (two connections) claim the same 60 alerts at the same moment, each for its own
    message: every alert is raised by exactly one; a claim again by the same message still raises it."""
    url, data = state_url, tmp_path
    ledgers = [open_ledger(url, data), open_ledger(url, data)]
    won: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def claim(n: int) -> None:
        start.wait()
        for i in range(60):
            if ledgers[n].claim(f"comm-{i}", f"msg-{n}", {"resourceType": "Communication", "id": f"comm-{i}"}):
                won[n].append(f"comm-{i}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(won[0] + won[1]) == sorted(f"comm-{i}" for i in range(60))
        assert not set(won[0]) & set(won[1])
        winner = 0 if "comm-0" in won[0] else 1
        assert ledgers[1 - winner].claim("comm-0", f"msg-{winner}", {"id": "comm-0"})  # a crash re-read
        assert not ledgers[winner].claim("comm-0", f"msg-{1 - winner}", {"id": "comm-0"})
        assert ledgers[0].sent("comm-0") == {"resourceType": "Communication", "id": "comm-0"}
        assert ledgers[0].sent("comm-none") is None
        # one raised before the ledger existed (found in a store) counts as raised by its own message
        assert not ledgers[0].claim("old", "msg-new", {"id": "old"}, prior=("msg-old", {"id": "old", "v": 1}))
        assert ledgers[1].claim("old", "msg-old", {"id": "old"})
    finally:
        for ledger in ledgers:
            ledger.close()


def test_register_keeps_the_newest_content(state_url: str, tmp_path: Path) -> None:
    url, data = state_url, tmp_path
    here, there = open_register(url, data), open_register(url, data)
    active = {"resourceType": "Flag", "id": "f1", "status": "active", "meta": {"versionId": "1"}}
    ended = {"resourceType": "Flag", "id": "f1", "status": "inactive"}
    try:
        assert here.get("Flag", "f1") == (False, None)
        assert here.write([Entry("Flag", "f1", active)]) == 1
        first = here.stamp("Flag", "f1")
        assert there.write([Entry("Flag", "f1", ended)], force=True) == 1  # the disenroll, on the other instance
        assert there.get("Flag", "f1") == (True, ended)
        # the enrollment's copy reaches a store sink later (another versionId): it changes nothing
        late = dict(active, meta={"versionId": "7", "lastUpdated": "2026-01-01T00:00:00Z"})
        assert here.write([Entry("Flag", "f1", late)]) == 0
        assert here.get("Flag", "f1") == (True, ended)
        assert (here.stamp("Flag", "f1") or 0) > (first or 0)
        assert here.write([Entry("Flag", "f1", active)], force=True) == 1  # a re-enrollment, identical
        assert here.get("Flag", "f1")[1] == active
        assert here.write([Entry("Flag", "f1", None)]) == 1  # deleted through the FHIR API
        assert there.get("Flag", "f1") == (True, None)
        assert here.write([Entry("Flag", "unknown", None)]) == 0
    finally:
        here.close()
        there.close()


def test_alerts_once_across_instances_from_the_shared_ledger_and_register(state_url: str, tmp_path: Path) -> None:
    """Three instances' rules, each with its own (empty) store, over one ledger and one register: the
    enrollment is read from the register; the arrival alerts on instance A, the same message re-read
    on B (A's worker crashed) republishes the same alert, the A08 of the visit on C raises nothing."""
    settings = load_settings(data_dir=tmp_path)
    when = datetime.now(ZoneInfo("America/Montreal"))
    first = parse(er_message(3, when=when))
    result = map_message(first, MapContext(PROFILES.for_message(first), SYSTEMS, datetime.now(UTC)))
    patient = next(r for r in result.resources if r["id"] == result.patient_id)
    register = open_register(state_url, tmp_path)
    register_written(register, enroll_resources(patient, EnrollRequest({"reference": "Practitioner/cm-7"}), None, []))
    opened: list[Any] = [register]
    rules = []
    for name in ("a", "b", "c"):
        store = FhirStore(tmp_path / f"{name}.sqlite")
        ledger, shared = open_ledger(state_url, tmp_path), open_register(state_url, tmp_path)
        opened += [store, ledger, shared]
        rules.append(DefiSanteRules(store, settings, ledger=ledger, register=shared))
    try:
        def comms(out: list[Any]) -> list[str]:
            return [json.loads(o.value)["resource"]["id"] for o in out if o.topic == "pivot.fhir.Communication"]

        raised = comms(rules[0].on_mapped(result, now_iso()))
        assert raised  # enrolled: read from the register, not from A's (empty) store
        assert comms(rules[1].on_mapped(result, now_iso())) == raised  # the crash re-read, on another instance
        update = parse(er_message(3, trigger="A08", when=when, control_id="UPDATE-3"))
        later = map_message(update, MapContext(PROFILES.for_message(update), SYSTEMS, datetime.now(UTC)))
        assert comms(rules[2].on_mapped(later, now_iso())) == []  # the visit was told about, on A
    finally:
        for item in reversed(opened):
            item.close()


def test_shared_state_down_is_a_503_or_a_retry_never_a_crash(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    when = datetime.now(ZoneInfo("America/Montreal"))
    msg = parse(er_message(4, when=when))
    result = map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime.now(UTC)))
    store = FhirStore(tmp_path / "fhir.sqlite")
    store.upsert_many(result.resources)
    register, ledger = open_register("", tmp_path), open_ledger("", tmp_path)
    register.close()  # the database gone: every call is StateUnavailable
    ledger.close()
    try:
        with pytest.raises(StoreError) as raised:
            DefiSante(store, None, settings, register=register).enroll(str(result.patient_id), enroll_body(), {})
        assert raised.value.status == 503
        rules = DefiSanteRules(store, settings, ledger=ledger, register=register)
        with pytest.raises(PublishError):  # the mapping worker retries the batch
            rules.on_mapped(result, now_iso())
    finally:
        store.close()


def test_postgresql_stopping_mid_feed_is_ar_system_down_never_a_dead_letter(tmp_path: Path) -> None:
    """The state server stops after start-up: the next message gets AR, transient (the site resends),
    and no dead letter (nothing is wrong with the message); the one before was accepted."""
    from connectors.base import Origin
    from gateway.app import Gateway
    from gateway.deadletters import list_deadletters
    from tests.pg_fixtures import start_pg

    server = start_pg()
    gateway = Gateway(load_settings(data_dir=tmp_path / "var", state_url=server.create_database(), workers=False))
    origin = Origin(transport="mllp", peer="127.0.0.1:5000")
    try:
        assert gateway.intake.receive(er_message(1), origin).code == "AA"
        server.stop()
        reply = gateway.intake.receive(er_message(2), origin)
        assert (reply.code, reply.transient) == ("AR", True)
        assert list_deadletters(gateway) == []
    finally:
        gateway.close()
        server.stop()

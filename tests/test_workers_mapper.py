"""The mapping worker's cost per message (issue #14): the handoff carries each resource's JSON text,
which the worker publishes as is (byte for byte the envelope of the resource), and a batch is
appended in short write transactions, not one of the whole batch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import gateway.envelope
import gateway.workers
from connectors.base import Origin
from gateway.app import Gateway
from gateway.delivery.bundle import BUNDLE_TOPIC, message_bundle
from gateway.envelope import dumps, envelope_head, envelope_text, fhir_envelope
from gateway.errors import PublishError
from gateway.eventlog.base import OutRecord
from gateway.eventlog.state.handoff import SharedMapCache
from gateway.intake import MapCache
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.topics import FHIR_TYPES, HL7V2_IN, fhir_topic
from gateway.workers import MappingWorker

ORIGIN = Origin("test", "mapper")
NOW = "2026-12-07T14:00:00.000Z"


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose intake hands its results over through handoff.sqlite (the MLLP listener's own
    process, as ``pivot serve`` runs it); workers started by the test only."""
    gw = Gateway(load_settings(data_dir=tmp_path / "var", workers=False), listener_process=True)
    yield gw
    gw.close()


def _mapper(gw: Gateway, cache: MapCache) -> MappingWorker:
    return MappingWorker(gw.settings, gw.log, gw.metrics, gw.pipeline, cache, hooks=[gw.rules, gw.pharmacy])


def test_the_handoff_carries_the_texts_the_worker_publishes(shared: Gateway,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(shared.cache, SharedMapCache)
    for i in range(3):
        assert shared.intake.receive(er_message(i), ORIGIN).code == "AA"
    records = shared.log.read_all(shared.settings.topic(HL7V2_IN))
    expected: list[bytes] = []
    monkeypatch.setattr(gateway.envelope, "now_iso", lambda: NOW)
    monkeypatch.setattr(gateway.workers, "now_iso", lambda: NOW)
    for rec in records:  # what the dict path publishes (a taken result stays readable: see handoff.py)
        sender, cid, received_at = rec.headers["sender"], rec.headers["msh10"], rec.headers["received_at"]
        result, texts = shared.cache.take(f"{sender}|{cid}")
        assert result is not None
        assert texts == [dumps(res) for res in result.resources]
        site = result.resources[0]["meta"]["source"]
        expected += [fhir_envelope(res, site=site, control_id=cid, sender=sender, received_at=received_at,
                                   resolved=result.resolved) for res in result.resources]
        head = envelope_head(site=site, control_id=cid, sender=sender, received_at=received_at, produced_at=NOW)
        expected.append(envelope_text(head, dumps(message_bundle(result.resources, sender=sender, control_id=cid)),
                                      result.resolved))
    serialised: list[Any] = []

    def counting(value: Any) -> str:
        serialised.append(value)
        return dumps(value)

    monkeypatch.setattr(gateway.workers, "dumps", counting)
    _mapper(shared, shared.cache).handle(records)
    topics = [shared.settings.topic(fhir_topic(t)) for t in FHIR_TYPES] + [shared.settings.topic(BUNDLE_TOPIC)]
    published = [r.value for topic in dict.fromkeys(topics) for r in shared.log.read_all(topic)]
    assert sorted(published) == sorted(expected)
    assert serialised == []  # every resource's text came with the handoff: none serialised again


def test_a_result_handed_over_before_the_text_format_is_still_read(shared: Gateway) -> None:
    """A body written by 0.6.0 (one JSON object) and not yet taken when the new version starts."""
    assert isinstance(shared.cache, SharedMapCache)
    assert shared.intake.receive(er_message(4), ORIGIN).code == "AA"
    (rec,) = shared.log.read_all(shared.settings.topic(HL7V2_IN))
    key = f"{rec.headers['sender']}|{rec.headers['msh10']}"
    result, _texts = shared.cache.take(key)
    assert result is not None
    old_body = json.dumps({f.name: getattr(result, f.name) for f in fields(result)}, ensure_ascii=False,
                          separators=(",", ":"))
    shared.cache.db.run("UPDATE handoff SET body = ?, taken = NULL WHERE key = ?", (old_body, key))
    assert shared.cache.take(key) == (result, None)  # the worker serialises the resources itself
    _mapper(shared, shared.cache).handle([rec])
    assert len(shared.log.read_all(shared.settings.topic(BUNDLE_TOPIC))) == 1


def test_a_batch_is_appended_in_short_write_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLLP listener's appends wait behind the worker's: a batch goes out every
    ``append_records`` records (each transaction short), all of it before the batch is committed."""
    gw = Gateway(load_settings(data_dir=tmp_path / "var", workers=False))
    try:
        for i in range(6):
            assert gw.intake.receive(er_message(i), ORIGIN).code == "AA"
        records = gw.log.read_all(gw.settings.topic(HL7V2_IN))
        sizes: list[int] = []
        real = gw.log.append_many

        def counting(out: list[OutRecord], *, sync: bool = True) -> None:
            assert not sync  # derived from hl7v2.in: not flushed (EventLog.append_many)
            sizes.append(len(out))
            real(out, sync=sync)

        monkeypatch.setattr(gw.log, "append_many", counting)
        mapper = _mapper(gw, gw.cache)
        mapper.append_records = 20
        mapper.handle(records)
        assert len(gw.log.read_all(gw.settings.topic(BUNDLE_TOPIC))) == 6
        per_message = sum(sizes) // 6  # the resources and the Bundle of one ER registration (~12)
        assert len([s for s in sizes if s]) >= 3  # before: one append of the whole batch
        assert all(s < mapper.append_records + per_message for s in sizes)
        topics = [gw.settings.topic(fhir_topic(t)) for t in FHIR_TYPES] + [gw.settings.topic(BUNDLE_TOPIC)]
        assert sum(sizes) == sum(len(gw.log.read_all(topic)) for topic in dict.fromkeys(topics))
    finally:
        gw.close()


def test_a_batch_retried_after_a_failed_append_is_not_resolved_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The second of a batch's appends fails (the log down a moment): Worker._retry hands the same
    batch again, which publishes what it took from the handoff, without a second resolution."""
    gw = Gateway(load_settings(data_dir=tmp_path / "var", workers=False))  # the handoff: memory, pop removes
    try:
        for i in range(4):
            assert gw.intake.receive(er_message(i), ORIGIN).code == "AA"
        records = gw.log.read_all(gw.settings.topic(HL7V2_IN))
        resolved: list[bytes] = []
        real_run, real_append = gw.pipeline.run, gw.log.append_many
        appends: list[int] = []

        def run(raw: bytes, *args: Any, **kwargs: Any) -> Any:
            resolved.append(raw)
            return real_run(raw, *args, **kwargs)

        def flaky(out: list[OutRecord], *, sync: bool = True) -> None:
            appends.append(len(out))
            if len(appends) == 2:
                raise PublishError("event log write failed")
            real_append(out, sync=sync)

        monkeypatch.setattr(gw.pipeline, "run", run)
        monkeypatch.setattr(gw.log, "append_many", flaky)
        mapper = _mapper(gw, gw.cache)
        mapper.append_records = 20
        mapper._retry(mapper.handle, records)
        assert len(appends) > 3  # the batch went out again
        assert resolved == []  # before: every message of the batch mapped and resolved a second time
        bundles = gw.log.read_all(gw.settings.topic(BUNDLE_TOPIC))
        assert {b.headers["msh10"] for b in bundles} == {r.headers["msh10"] for r in records}
    finally:
        gw.close()


def test_a_batch_takes_its_handed_over_results_in_one_call(shared: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker asks the handoff once per batch (one transaction, not one per message: issue #14),
    for each message once, and resolves none of them again; a retried batch asks for none again."""
    assert isinstance(shared.cache, SharedMapCache)
    for i in range(5):
        assert shared.intake.receive(er_message(i), ORIGIN).code == "AA"
    records = shared.log.read_all(shared.settings.topic(HL7V2_IN))
    calls: list[list[str]] = []
    real = shared.cache.take_many

    def take_many(keys: list[str]) -> Any:
        calls.append(list(keys))
        return real(keys)

    monkeypatch.setattr(shared.cache, "take_many", take_many)
    worker = _mapper(shared, shared.cache)
    resolved: list[bytes] = []
    monkeypatch.setattr(worker, "_resolve", lambda rec, _at: resolved.append(rec.value))
    appends = 0
    real_append = shared.log.append_many

    def failing_once(records_: list[OutRecord], sync: bool = True) -> None:
        nonlocal appends
        appends += 1
        if appends == 1:
            raise PublishError("log down")
        real_append(records_, sync=sync)

    monkeypatch.setattr(shared.log, "append_many", failing_once)
    with pytest.raises(PublishError):
        worker.handle(records)
    worker.handle(records)  # Worker._retry: the same batch again
    assert calls == [[f"{r.headers['sender']}|{r.headers['msh10']}" for r in records], []]
    assert resolved == []
    patients = shared.log.read_all(shared.settings.topic(fhir_topic("Patient")))
    assert len({r.key for r in patients}) == 5

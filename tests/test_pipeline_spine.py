"""The pipeline spine (gateway/pipeline.py): the required-structure check runs once per message on
the ACK path, the mapping worker takes its rule hooks from the composition root (no defaults), and
the spine's refusals carry their stage."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import mappings.messages
import mappings.messages.engine
import mappings.pharmacy.messages
from connectors.base import Origin
from gateway.app import Gateway
from gateway.errors import StructureError
from gateway.eventlog.base import OutRecord
from gateway.hl7v2 import parse
from gateway.intake import MapCache
from gateway.pipeline import DECODE, MAP, STRUCTURE, SUPPORTED, Pipeline, msh_head
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.workers import MappingWorker
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message
from tests.test_mappings_messages import drop, edit

ORIGIN = Origin("test", "spine")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(load_settings(data_dir=tmp_path / "var", workers=False))
    yield gw
    gw.close()


@pytest.fixture
def structure_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of mappings.structure.check_structure, wherever it was imported."""
    calls: list[str] = []
    real: Callable[..., None] = mappings.structure.check_structure

    def counting(msg: Any, structure: str, *args: Any, **kwargs: Any) -> None:
        calls.append(structure)
        real(msg, structure, *args, **kwargs)

    for module in (mappings.messages, mappings.messages.engine, mappings.pharmacy.messages):
        monkeypatch.setattr(module, "check_structure", counting)
    return calls


def test_the_intake_checks_the_required_structure_once_per_message(gateway: Gateway,
                                                                   structure_calls: list[str]) -> None:
    assert gateway.intake.receive(er_message(1), ORIGIN).code == "AA"
    assert structure_calls == ["ADT_A01"]  # before the spine: twice (intake, then inside map_message)
    structure_calls.clear()
    assert gateway.pipeline.run(er_message(2)).result is not None
    assert len(structure_calls) == 1


def test_map_message_alone_still_checks_the_structure(structure_calls: list[str]) -> None:
    profiles = Profiles.load(None, "America/Montreal")
    msg = parse(drop(er_message(3), "PV1"))
    with pytest.raises(StructureError):
        map_message(msg, MapContext(profiles.for_message(msg), IdentifierSystems.load(None), datetime.now(UTC)))
    assert len(structure_calls) == 1


def test_the_spine_names_the_stage_of_a_refusal() -> None:
    pipeline = Pipeline(Profiles.load(None, "America/Montreal"), IdentifierSystems.load(None), identity=None)
    assert pipeline.run(b"garbage").stage == DECODE
    unsupported = er_message(4).replace(b"ADT^A04", b"ADT^Z99", 1)
    assert pipeline.run(unsupported).stage == SUPPORTED
    missing = pipeline.run(drop(er_message(5), "PV1"))
    assert (missing.stage, missing.error is not None and missing.error.hl7_code) == (STRUCTURE, "100")
    bad_date = pipeline.run(edit(er_message(6), "PID", 7, "19501345"))
    assert (bad_date.stage, bad_date.error is not None and bad_date.error.hl7_code) == (MAP, "102")
    ok = pipeline.run(er_message(7))
    assert ok.error is None
    assert ok.result is not None
    assert ok.result.patient_id


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[MapResult] = []

    def on_mapped(self, result: MapResult, received_at: str) -> list[OutRecord]:
        self.seen.append(result)
        return [OutRecord(topic="pivot.test.hook", value=b"x", key=b"k", headers={})]

    def close(self) -> None:
        """Nothing to release."""


def test_the_mapping_worker_runs_only_the_hooks_it_is_given(gateway: Gateway) -> None:
    assert inspect.signature(MappingWorker).parameters["hooks"].default is inspect.Parameter.empty
    assert gateway.intake.receive(er_message(8), ORIGIN).code == "AA"
    records = gateway.log.read_all(gateway.settings.topic("hl7v2.in"))
    bare = MappingWorker(gateway.settings, gateway.log, gateway.metrics, gateway.pipeline, MapCache(), hooks=[])
    assert bare.hooks == []
    bare.handle(records)  # a cache miss: through the spine, no rule runs
    assert gateway.log.read_all("pivot.test.hook") == []
    recorder = _Recorder()
    MappingWorker(gateway.settings, gateway.log, gateway.metrics, gateway.pipeline, MapCache(),
                  hooks=[recorder]).handle(records)
    assert [r.control_id for r in recorder.seen] == [records[0].headers["msh10"]]
    assert len(gateway.log.read_all("pivot.test.hook")) == 1


def test_the_composition_root_gives_defisante_then_pharmacy(tmp_path: Path) -> None:
    gw = Gateway(load_settings(data_dir=tmp_path / "var"))
    try:
        gw.start_workers()
        mappers = [w for w in gw.workers if isinstance(w, MappingWorker)]  # the live lane's and the bulk lane's
        assert [type(m).__name__ for m in mappers] == ["MappingWorker", "BulkMappingWorker"]
        for mapper in mappers:
            assert mapper.hooks == [gw.rules, gw.pharmacy]
        assert mappers[0].turn is mappers[1].turn is not None  # one batch at a time between them
    finally:
        gw.close()


def test_warming_the_pipeline_keeps_nothing(tmp_path: Path) -> None:
    """``Pipeline.warm`` (start-up of `pivot serve` and of the listener process) maps synthetic messages
    and keeps nothing: a warmed gateway then treats a message exactly as a fresh one does (same ACK,
    same resolution rank: no identity resolved during the warm-up), and its log holds only that message."""
    from gateway.samples import site_message

    outcomes = []
    for warmed in (False, True):
        gw = Gateway(load_settings(data_dir=tmp_path / f"var{int(warmed)}", workers=False))
        try:
            if warmed:
                gw.intake.pipeline.warm()
            raw = site_message(0)
            reply = gw.intake.receive(raw, Origin("test", "unit"))
            result = gw.cache.pop(f"{parse(raw).sender}|{reply.control_id}")
            assert result is not None
            outcomes.append((reply.code, result.resolved, result.patient_id,
                             len(gw.log.read_all(gw.settings.topic("hl7v2.in")))))
        finally:
            gw.close()
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][0] == "AA"
    assert outcomes[1][3] == 1


def test_decode_keeps_the_msh_segment_already_read_only_when_it_reads_the_same() -> None:
    """The intake reads the MSH alone first (sender, profile); ``decode`` keeps that segment, its fields
    already split, when the message's first line reads the same in the message's charset."""
    pipeline = Pipeline(Profiles.load(None, "America/Montreal"), IdentifierSystems.load(None), identity=None)
    raw = er_message(11)
    head = msh_head(raw)
    assert head is not None
    msg = pipeline.decode(raw, head)
    assert msg.msh is head.msh
    assert [s.fields for s in msg.segments] == [s.fields for s in parse(raw).segments]
    for facility, charset, codec in (("Hôpital", "UNICODE UTF-8", "utf-8"), ("Hôpital", "8859/1", "latin-1"),
                                     ("HOPITAL", "8859/1", "latin-1")):
        msh, rest = er_message(12, charset=charset).decode(codec).split("\r", 1)
        fields = msh.split("|")
        fields[3] = facility  # MSH-4
        raw = "\r".join(["|".join(fields), rest]).encode(codec)
        head = msh_head(raw)  # read as latin-1: a UTF-8 MSH-4 reads otherwise
        assert head is not None
        msg = pipeline.decode(raw, head)
        assert msg.msh is not head.msh  # another text ("HÃ´pital") or another charset
        assert msg.sending_facility == facility
        assert [s.fields for s in msg.segments] == [s.fields for s in parse(raw, None).segments]


def test_require_finds_the_profile_of_its_own_message(tmp_path: Path) -> None:
    """``decode`` found the sender's profile; ``require`` reuses it only for that same message."""
    relaxed = parse(er_message(13))
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"senders": [{"name": "no-evn", "application": relaxed.sending_application,
                                             "facility": relaxed.sending_facility, "relax": ["EVN"]}]}))
    pipeline = Pipeline(Profiles.load(path, "America/Montreal"), IdentifierSystems.load(None), identity=None)
    other = edit(er_message(13), "MSH", 4, "OTHER")
    a, b = pipeline.decode(drop(er_message(13), "EVN")), pipeline.decode(drop(other, "EVN"))
    assert pipeline.require(a).name == "no-evn"  # b was decoded last: its profile is not a's
    with pytest.raises(StructureError):
        pipeline.require(b)
    assert pipeline.require(pipeline.decode(er_message(14))).name == "default"

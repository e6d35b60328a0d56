"""The intake -> mapping worker handoff (gateway/eventlog/state/handoff.py): ``take`` on every
cache (a method each cache answers for itself) and the body read back in one JSON parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.envelope import dumps
from gateway.eventlog.state import handoff
from gateway.intake import MapCache
from mappings import MapResult


def _result(cid: str, resources: int = 2) -> MapResult:
    res = [{"resourceType": "Patient", "id": f"p{i}", "name": [{"family": "Côté", "text": "a\nb"}]}
           for i in range(resources)]
    return MapResult(resources=res, patient_id="p0", unmapped_segments=["ZXX"], message_code="ADT", trigger="A04",
                     sender="APP|FAC", control_id=cid, event_time="2026-01-01T08:00:00-05:00",
                     nulls={"Patient/p0": ["telecom"]}, resolved=7)


@pytest.mark.parametrize("resources", [0, 1, 3])
def test_a_body_is_read_back_in_one_parse(resources: int, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _result("c1", resources)
    body = handoff.encode(result)
    parses: list[str] = []
    loads = json.loads

    def counting(text: str, **kwargs: Any) -> Any:
        parses.append(text)
        return loads(text, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    assert handoff.decode(body) == (result, [dumps(res) for res in result.resources])
    assert len(parses) == 1


def test_a_body_of_one_json_object_is_still_read() -> None:
    """As written before 0.6.1: the result, no texts (the worker serialises the resources itself)."""
    result = _result("c2")
    old = json.dumps({"resources": result.resources, "patient_id": "p0", "unmapped_segments": ["ZXX"],
                      "message_code": "ADT", "trigger": "A04", "sender": "APP|FAC", "control_id": "c2",
                      "event_time": "2026-01-01T08:00:00-05:00", "nulls": {"Patient/p0": ["telecom"]},
                      "resolved": 7})
    assert handoff.decode(old) == (result, None)


def test_take_of_each_cache(tmp_path: Path) -> None:
    memory = MapCache()
    memory.put("APP|FAC|c1", _result("c1"))
    assert memory.take("APP|FAC|c1") == (_result("c1"), None)
    assert memory.take("APP|FAC|c1") == (None, None)  # popped
    spill = handoff.SpillMapCache(tmp_path, memory_items=1)
    try:
        spill.put("APP|FAC|m", _result("m"))
        spill.put("APP|FAC|s", _result("s"))  # beyond the memory bound: the spill file
        assert spill.spilled == 1
        assert spill.take("APP|FAC|m") == (_result("m"), None)
        assert spill.take("APP|FAC|s") == (_result("s"), [dumps(r) for r in _result("s").resources])
        assert spill.take("APP|FAC|m") == (None, None)
        assert spill.take("APP|FAC|s")[0] == _result("s")  # taken, kept for a worker killed before its commit
    finally:
        spill.close()


def test_a_batch_is_handed_over_and_taken_in_one_call_each(tmp_path: Path) -> None:
    """``put_many`` / ``take_many`` (``pivot ingest``'s batches, the mapping worker's): every result
    found, the missing keys left out, more keys than one IN list holds; taken results stay readable."""
    keys = [f"APP|FAC|b{i}" for i in range(1_203)]  # three IN lists
    memory = MapCache()
    memory.put_many([(key, _result(key)) for key in keys[:3]])
    assert memory.take_many([*keys[:3], "APP|FAC|none"]) == {key: (_result(key), None) for key in keys[:3]}
    assert memory.take_many(keys[:3]) == {}  # popped
    spill = handoff.SpillMapCache(tmp_path, memory_items=2)
    try:
        spill.put_many([(key, _result(key)) for key in keys])
        assert spill.spilled == len(keys) - 2
        got = spill.take_many([*keys, "APP|FAC|none"])
        assert list(got) == keys  # memory first, then the file: here in the order asked
        assert got[keys[0]] == (_result(keys[0]), None)
        assert got[keys[-1]] == (_result(keys[-1]), [dumps(r) for r in _result(keys[-1]).resources])
        again = spill.take_many(keys)  # the file keeps what was taken (a worker killed before its commit)
        assert set(again) == set(keys[2:])
        assert spill.take_many([]) == {}
    finally:
        spill.close()



def test_a_damaged_body_is_left_out_of_its_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One unreadable body does not cost the batch (nor stop the mapping worker): the others are taken,
    that message is mapped by the worker itself; the log names no value."""
    cache = handoff.SharedMapCache(handoff.open_state("", tmp_path, handoff.FILE_NAME, handoff.SCHEMA))
    try:
        cache.put_many([("APP|FAC|ok", _result("ok")), ("APP|FAC|bad", _result("bad"))])
        cache.db.run("UPDATE handoff SET body = ? WHERE key = ?", ("2\n{not json", "APP|FAC|bad"))
        with caplog.at_level("WARNING", logger="pivot.handoff"):
            assert cache.take_many(["APP|FAC|ok", "APP|FAC|bad"]) == {"APP|FAC|ok": (_result("ok"), [
                dumps(r) for r in _result("ok").resources])}
        assert "handoff body unreadable" in caplog.text
        assert "not json" not in caplog.text
    finally:
        cache.close()

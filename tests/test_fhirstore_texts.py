"""The store sink's text path (issue #14): envelopes read without parsing their resource, resources
digested from their text, the same content in another key order changing nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.envelope import dumps, envelope_head, envelope_resource, envelope_text
from gateway.eventlog.base import Record
from gateway.eventlog.embedded import EmbeddedLog
from gateway.fhirstore import FhirStore
from gateway.metrics import Metrics
from gateway.settings import load_settings
from gateway.topics import DEADLETTER
from gateway.workers import StoreSink
from tests.test_fhirstore_data import encounter, patient

_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _head(sender: str = "HIS|HSA") -> str:
    return envelope_head(site="urn:site", control_id="C1", sender=sender, received_at="2026-12-07T12:00:00Z",
                         produced_at="2026-12-07T12:00:01Z")


def _reordered(resource: dict[str, Any]) -> dict[str, Any]:
    """The same resource, its head first and every other element (at every depth) in reverse order."""
    def flip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: flip(node[k]) for k in reversed(node)}
        return [flip(x) for x in node] if isinstance(node, list) else node
    head = {k: resource[k] for k in ("resourceType", "id", "meta") if k in resource}
    return head | {k: flip(resource[k]) for k in reversed(resource) if k not in head}


@pytest.mark.parametrize("resolved", [0, 7, 123456789])
@pytest.mark.parametrize("sender", ["HIS|HSA", 'a","resource":{"x":1},"b', 'q\\",\\"resolved\\":9}'])
def test_envelope_resource_reads_back_what_envelope_text_wrote(resolved: int, sender: str) -> None:
    last_resolved = {**patient(1), "resolved": 5}  # a resource whose last key is "resolved"
    for resource in (patient(1), last_resolved, {"resourceType": "Basic", "id": "é-1"}):
        value = envelope_text(_head(sender), dumps(resource), resolved)
        got = envelope_resource(value)
        assert got == (dumps(resource), resolved)
        whole = json.loads(value)
        assert (json.loads(got[0]), whole.get("resolved", 0)) == (whole["resource"], resolved)


def test_envelope_resource_leaves_any_other_layout_to_the_json_parser() -> None:
    value = envelope_text(_head(), dumps(patient(1)), 3)
    whole = json.loads(value)
    others = [json.dumps(whole).encode(),  # spaces
              dumps({"resource": whole["resource"], **{k: v for k, v in whole.items() if k != "resource"}}).encode(),
              dumps({**whole, "schema_version": 2}).encode(),
              b'{"schema_version":1,"resource":{}}', b"[]", b""]
    assert [envelope_resource(v) for v in others] == [None] * len(others)


def test_the_same_content_in_another_key_order_makes_no_version(tmp_path: Path) -> None:
    store = FhirStore(tmp_path / "fhir.sqlite")
    try:
        resources = [patient(1), encounter(1, "pat-1")]
        store.upsert_many(copy.deepcopy(resources))
        assert store.upsert_texts([dumps(_reordered(r)) for r in resources]) == [False, False]
        assert store.update(_reordered(patient(1))).status == "unchanged"
        assert store.upsert_many([_reordered(r) for r in resources]) == [
            (store.read(r["resourceType"], r["id"]).resource, False) for r in resources]
        # a change that keeps the text's length (a date) is a change
        assert patient(1)["birthDate"] == "1958-04-12"
        changed = _reordered({**patient(1), "birthDate": "1958-04-13"})
        assert store.upsert_texts([dumps(changed)]) == [True]
        entry = store.read("Patient", "pat-1")
        assert (entry.version, entry.resource["birthDate"]) == (2, "1958-04-13")
        assert store.upsert_texts([dumps(changed)]) == [False]
    finally:
        store.close()


def test_a_store_of_sorted_bodies_takes_the_mappers_texts_as_unchanged(tmp_path: Path) -> None:
    """Stores before digest scheme 3 kept each body in sorted key order: after the upgrade's rehash, a
    resend of the mapping worker's text (its own key order) changes nothing, then compares by digest."""
    path = tmp_path / "fhir.sqlite"
    resources = [patient(1), encounter(1, "pat-1"),
                 {"resourceType": "Patient", "id": "meta-tag", "meta": {"tag": [{"code": "x"}], "source": "s"},
                  "name": [{"given": ["Zoé"], "family": "Roy"}], "active": True}]
    store = FhirStore(path)
    store.upsert_many(copy.deepcopy(resources))
    with store.writing() as writer:  # as 0.6.0 left it: sorted bodies, digests of another scheme
        bodies = writer.conn.execute("SELECT seq, body FROM versions").fetchall()
        writer.conn.executemany("UPDATE versions SET body = ? WHERE seq = ?",
                                [(_SORTED.encode(json.loads(body)), seq) for seq, body in bodies])
        writer.conn.execute("UPDATE resources SET hash = x'00'")
        writer.conn.execute("UPDATE store_meta SET value = '2' WHERE key = 'digest'")
    store.close()
    store = FhirStore(path)
    try:
        texts = [dumps({"resourceType": r["resourceType"], "id": r["id"],  # as the mapper lays it out
                        "meta": {**r.get("meta", {}), "source": "urn:other-message"}}
                       | {k: v for k, v in r.items() if k != "meta"}) for r in resources]
        assert store.upsert_texts(texts) == [False] * len(texts)
        assert store.upsert_texts(texts) == [False] * len(texts)
        for r in resources:
            entry = store.read(r["resourceType"], r["id"])
            assert entry.version == 1
            assert {k: v for k, v in entry.resource.items() if k != "meta"} == {
                k: v for k, v in r.items() if k != "meta"}
    finally:
        store.close()


def test_the_store_sink_dead_letters_a_resource_it_cannot_read_and_writes_the_others(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "var")
    store = FhirStore(tmp_path / "fhir.sqlite")
    log = EmbeddedLog(tmp_path / "log.sqlite")
    sink = StoreSink(settings, log, Metrics(), store)
    head = _head()
    values = [envelope_text(head, dumps(patient(1)), 0),
              envelope_text(head, '["not", "an object"]', 0),
              envelope_text(head, '{"resourceType":"Patient","id":"pat-9","meta":{},"active":tru}', 0),
              envelope_text(head, dumps(patient(2)), 4),
              dumps({**json.loads(envelope_text(head, dumps(patient(3)), 0)), "later": {"a": 1}}).encode()]
    try:
        sink.handle([Record("pivot.fhir.Patient", 0, n, b"k", v, {}, 0) for n, v in enumerate(values)])
        assert [store.read("Patient", f"pat-{n}").version for n in (1, 2, 3)] == [1, 1, 1]
        dead = log.consumer("t", [settings.topic(DEADLETTER)]).poll(timeout_s=0.5, max_records=10)
        assert sorted(r.value for r in dead) == sorted(values[1:3])
        assert {r.headers["stage"] for r in dead} == {"store"}
    finally:
        log.close()
        store.close()


def test_a_copy_the_store_holds_is_not_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store sink's replays and resends: only a digest per copy (``content.prepare_text``)."""
    from gateway.fhirstore import content

    store = FhirStore(tmp_path / "fhir.sqlite")
    try:
        texts = [dumps(patient(n)) for n in range(3)]
        assert store.upsert_texts(texts, [2, 2, 2]) == [True] * 3

        def no_parse(text: str) -> dict[str, Any]:
            raise AssertionError("parsed")
        monkeypatch.setattr(content, "_loads", no_parse)
        assert store.upsert_texts(texts, [2, 2, 1]) == [False] * 3  # the same copies, one of them older news
    finally:
        store.close()

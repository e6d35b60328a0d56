"""The store sink's batch path (``upsert_many`` → ``Writer.put_many``): the same result as one ``put``
per resource, in a number of SQL statements that does not grow with the batch, digests unchanged."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.fhir.models import canonical_json
from gateway.fhirstore import FhirStore
from tests.test_fhirstore_data import SAMPLES, encounter, patient

_INDEX = ("idx_token", "idx_ref", "idx_date", "idx_string")


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[FhirStore, FhirStore]]:
    a, b = FhirStore(tmp_path / "a" / "fhir.sqlite"), FhirStore(tmp_path / "b" / "fhir.sqlite")
    yield a, b
    a.close()
    b.close()


def _state(store: FhirStore) -> dict[str, Any]:
    """Every row of the store by (type, id), times left out (each transaction has its own)."""
    with store.reading() as conn:
        names = {rk: (t, i) for rk, t, i in conn.execute("SELECT rk, rtype, id FROM resources")}
        resources = sorted(conn.execute("SELECT rtype, id, version, deleted, hash FROM resources"))
        versions = []
        for rk, version, method, body in conn.execute("SELECT rk, version, method, body FROM versions ORDER BY seq"):
            resource = json.loads(body) if body is not None else None
            if resource is not None:
                del resource["meta"]["lastUpdated"]
            versions.append((names[rk], version, method, resource))
        index = {table: sorted((names[row[0]], *row[1:]) for row in conn.execute(f"SELECT * FROM {table}"))
                 for table in _INDEX}
    return {"resources": resources, "versions": versions, "index": index}


def test_a_batch_writes_what_one_put_per_resource_writes(stores: tuple[FhirStore, FhirStore]) -> None:
    batched, one_by_one = stores
    for store in stores:  # before: patients 1, 2 and 5 stored, patient 2 then deleted
        store.upsert_many([patient(1), patient(2), patient(5), *[res for res, _q in SAMPLES.values()]])
        store.delete("Patient", "pat-2")
    moved = encounter(1, "pat-3")
    moved["period"] = {"start": "2026-04-01T10:00:00-04:00"}
    batch = [patient(1),  # unchanged
             patient(5, family="Tremblay"), patient(5, family="Bérubé"),  # two versions in one batch, indexed once
             patient(2),  # created again after its deletion
             patient(3), encounter(1, "pat-3"), patient(3),  # new, then the same again: unchanged
             moved,  # the encounter changed again in the same batch
             *[copy.deepcopy(res) for res, _q in SAMPLES.values()]]  # all unchanged
    out = batched.upsert_many(batch)
    singles = [one_by_one.update(res) for res in batch]
    assert [(r["meta"]["versionId"], changed) for r, changed in out] == \
        [(str(o.version), o.changed) for o in singles]
    assert [changed for _r, changed in out][:8] == [False, True, True, True, True, True, False, True]
    assert _state(batched) == _state(one_by_one)
    _q, page = batched.search("Patient", [("family", "berube")])
    assert [e.id for e in page.entries] == ["pat-5"]
    _q, page = batched.search("Patient", [("family", "tremblay")])
    assert page.entries == []


class _Counting:
    """The store's write connection, counting the statements sent to SQLite (execute/executemany calls)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.calls: list[str] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.calls.append(sql)
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self.calls.append(sql)
        return self.conn.executemany(sql, rows)


def _calls(store: FhirStore, resources: list[dict[str, Any]]) -> list[str]:
    real = store._conn
    counting = _Counting(real)
    store._conn = counting  # type: ignore[assignment]
    try:
        store.upsert_many(resources)
    finally:
        store._conn = real
    return counting.calls


def test_the_statements_of_a_batch_do_not_grow_with_its_size(stores: tuple[FhirStore, FhirStore]) -> None:
    small, large = stores
    for n in (5, 200):  # new resources, then every one of them changed, then all unchanged
        store = small if n == 5 else large
        runs = [_calls(store, [patient(i) for i in range(n)] + [encounter(i, f"pat-{i}") for i in range(n)]),
                _calls(store, [patient(i, family="Roy") for i in range(n)]),
                _calls(store, [patient(i, family="Roy") for i in range(n)])]
        if n == 5:
            few = [len(calls) for calls in runs]
        else:
            assert [len(calls) for calls in runs] == few
            # the batch's rows, the next rk, the bodies of those whose digest differs (content.same_content)
            assert sum(sql.lstrip().startswith("SELECT") for sql in runs[1]) <= 3
    assert large.counts() == {"Patient": 200, "Encounter": 200}


def _canonical_digest(resource: dict[str, Any]) -> bytes:
    """The digest of stores written before 0.5: blake2b-128 of the canonical JSON without meta.source."""
    content = copy.deepcopy(resource)
    meta = {k: v for k, v in content.pop("meta", {}).items() if k not in ("source", "versionId", "lastUpdated")}
    if meta:
        content["meta"] = meta
    return hashlib.blake2b(canonical_json(content).encode(), digest_size=16).digest()


def test_a_store_digested_the_old_way_is_rehashed_once_and_changes_nothing(tmp_path: Path) -> None:
    """A store written by an earlier version (other content digests) is rehashed on open: writing the
    same resources again then makes no new version (else every resource would get one after an upgrade)."""
    path = tmp_path / "data" / "fhir.sqlite"
    resources = [patient(1), encounter(1, "pat-1"), *[res for res, _q in SAMPLES.values()],
                 {"resourceType": "Patient", "id": "no-meta", "active": False},
                 {"resourceType": "Patient", "id": "meta-tag", "meta": {"tag": [{"code": "x"}], "source": "s"}}]
    store = FhirStore(path)
    written = store.upsert_many(resources)
    with store.writing() as writer:  # as an earlier version left it
        writer.conn.executemany("UPDATE resources SET hash = ? WHERE rtype = ? AND id = ?",
                                [(_canonical_digest(r), r["resourceType"], r["id"]) for r, _c in written])
        writer.conn.execute("DELETE FROM store_meta WHERE key = 'digest'")
    store.close()
    store = FhirStore(path)
    try:
        again = store.upsert_many(copy.deepcopy(resources))
        assert [changed for _r, changed in again] == [False] * len(resources)
        assert [r["meta"]["versionId"] for r, _c in again] == [r["meta"]["versionId"] for r, _c in written]
        for stored, _c in again:  # the stored text reads back as the resource the write returned
            assert store.read(stored["resourceType"], stored["id"]).resource == stored
    finally:
        store.close()

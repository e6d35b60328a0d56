"""The embedded FHIR store used directly: versioned idempotent upserts, history, search, index."""

from __future__ import annotations

import copy
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import PublishError, StoreError
from gateway.fhirstore import FhirStore
from gateway.fhirstore import params as params_table
from gateway.fhirstore.dates import MAX_MS, date_range, instant_text, period_range, split_prefix
from gateway.fhirstore.extract import extract, normalise, split_reference
from gateway.fhirstore.params import SEARCH_PARAMS, SearchParam
from gateway.fhirstore.query import split_escaped
from tests.test_fhirstore_data import NAM, SAMPLES, condition, encounter, patient


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FhirStore]:
    s = FhirStore(tmp_path / "data" / "fhir.sqlite")
    yield s
    s.close()


def _ids(store: FhirStore, rtype: str, *params: tuple[str, str]) -> list[str]:
    _q, page = store.search(rtype, list(params), strict=True)
    return [e.id for e in page.entries]


# -- upserts and versions ------------------------------------------------------------------------
def test_same_content_twice_is_one_version(store: FhirStore) -> None:
    [(first, changed1)] = store.upsert_many([patient(1)])
    [(second, changed2)] = store.upsert_many([patient(1)])
    assert (changed1, changed2) == (True, False)
    assert first["meta"]["versionId"] == second["meta"]["versionId"] == "1"
    assert second["meta"]["lastUpdated"] == first["meta"]["lastUpdated"]
    assert second["meta"]["source"] == patient(1)["meta"]["source"]
    _q, page = store.history("Patient", "pat-1", [])
    assert page.total == 1


def test_meta_version_and_last_updated_are_ignored_when_comparing(store: FhirStore) -> None:
    [(stored, _)] = store.upsert_many([patient(1)])
    replay = copy.deepcopy(stored)
    replay["meta"]["versionId"], replay["meta"]["lastUpdated"] = "7", "2020-01-01T00:00:00Z"
    [(again, changed)] = store.upsert_many([replay])
    assert not changed
    assert again["meta"]["versionId"] == "1"


def test_new_content_is_version_two_and_both_versions_stay_readable(store: FhirStore) -> None:
    store.upsert_many([patient(1)])
    moved = patient(1)
    moved["address"][0]["city"] = "Mont-Tremblant"
    [(stored, changed)] = store.upsert_many([moved])
    assert changed
    assert stored["meta"]["versionId"] == "2"
    assert store.read("Patient", "pat-1").resource == stored
    assert store.vread("Patient", "pat-1", "1").resource["address"][0]["city"] == "Sainte-Agathe-des-Monts"  # type: ignore[index]
    assert store.vread("Patient", "pat-1", "2").resource["address"][0]["city"] == "Mont-Tremblant"  # type: ignore[index]
    with pytest.raises(StoreError) as err:
        store.vread("Patient", "pat-1", "3")
    assert err.value.status == 404


def test_stored_resource_starts_with_type_id_and_meta(store: FhirStore) -> None:
    [(stored, _)] = store.upsert_many([patient(1)])
    assert list(stored)[:3] == ["resourceType", "id", "meta"]
    assert list(stored["meta"])[:2] == ["versionId", "lastUpdated"]


def test_history_is_newest_first_at_instance_and_type_level(store: FhirStore) -> None:
    store.upsert_many([patient(1), patient(2)])
    store.upsert_many([patient(1, family="Tremblay")])
    store.delete("Patient", "pat-2")
    _q, page = store.history("Patient", "pat-1", [])
    assert [e.version for e in page.entries] == [2, 1]
    _q, page = store.history("Patient", None, [])
    assert [(e.id, e.version, e.resource is None) for e in page.entries] == [
        ("pat-2", 2, True), ("pat-1", 2, False), ("pat-2", 1, False), ("pat-1", 1, False)]
    with pytest.raises(StoreError) as err:
        store.history("Patient", "nobody", [])
    assert err.value.status == 404


def test_a_batch_is_one_transaction(store: FhirStore) -> None:
    bad = patient(3)
    bad["id"] = "not a valid id!"
    with pytest.raises(StoreError):
        store.upsert_many([patient(1), encounter(1, "pat-1"), bad])
    assert store.counts() == {}
    store.upsert_many([patient(1), encounter(1, "pat-1")])
    assert store.counts() == {"Encounter": 1, "Patient": 1}


def test_the_same_resource_twice_in_a_batch_makes_two_versions(store: FhirStore) -> None:
    out = store.upsert_many([patient(1), patient(1, family="Tremblay"), patient(1, family="Tremblay")])
    assert [(r["meta"]["versionId"], changed) for r, changed in out] == [("1", True), ("2", True), ("2", False)]


def test_unsupported_type_and_missing_id_are_refused(store: FhirStore) -> None:
    with pytest.raises(StoreError) as err:
        store.upsert_many([{"resourceType": "Basic", "id": "b1"}])
    assert err.value.status == 405
    with pytest.raises(StoreError) as err:
        store.upsert_many([{"resourceType": "Patient"}])
    assert err.value.status == 400


def test_database_failures_become_retryable_publish_errors(store: FhirStore, monkeypatch: Any) -> None:
    def broken(*_a: Any, **_k: Any) -> Any:
        import sqlite3
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("gateway.fhirstore.writer.Writer.put_many", broken)  # upsert_many's path
    with pytest.raises(PublishError):
        store.upsert_many([patient(1)])


def test_delete_then_read_is_gone_and_a_new_upsert_recreates(store: FhirStore) -> None:
    store.upsert_many([patient(1)])
    outcome = store.delete("Patient", "pat-1")
    assert outcome.status == "deleted"
    assert outcome.version == 2
    assert store.delete("Patient", "pat-1").status == "unchanged"
    with pytest.raises(StoreError) as err:
        store.read("Patient", "pat-1")
    assert err.value.status == 410
    with pytest.raises(StoreError) as err:
        store.vread("Patient", "pat-1", "2")
    assert err.value.status == 410
    assert _ids(store, "Patient", ("identifier", "GAGM58000001")) == []
    [(again, changed)] = store.upsert_many([patient(1)])
    assert changed
    assert again["meta"]["versionId"] == "3"
    assert _ids(store, "Patient", ("identifier", "GAGM58000001")) == ["pat-1"]


def test_if_match_is_checked_against_the_current_version(store: FhirStore) -> None:
    store.upsert_many([patient(1)])
    with pytest.raises(StoreError) as err:
        store.update(patient(1, family="Tremblay"), if_match=2)
    assert err.value.status == 412
    assert store.update(patient(1, family="Tremblay"), if_match=1).version == 2


# -- the file ------------------------------------------------------------------------------------
def test_database_files_are_private(store: FhirStore) -> None:
    store.upsert_many([patient(1)])
    store.search("Patient", [])
    files = [p for p in store.path.parent.iterdir() if p.name.startswith("fhir.sqlite")]
    assert {p.name for p in files} >= {"fhir.sqlite", "fhir.sqlite-wal", "fhir.sqlite-shm"}
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path.name


def test_data_survives_a_reopen_and_the_index_is_rebuilt_when_params_change(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "fhir.sqlite"
    first = FhirStore(path)
    first.upsert_many([patient(1), encounter(1, "pat-1")])
    first.close()
    with pytest.raises(StoreError):
        first.read("Patient", "pat-1")
    monkeypatch.setattr("gateway.fhirstore.store._params_digest", lambda: "changed")
    second = FhirStore(path)
    try:
        assert second.read("Patient", "pat-1").version == 1
        assert _ids(second, "Encounter", ("patient", "pat-1")) == ["enc-1"]
        assert second.reindex() == 2
    finally:
        second.close()


# -- search --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rtype", sorted(SAMPLES))
def test_every_indexed_parameter_finds_its_sample(store: FhirStore, rtype: str) -> None:
    resource, queries = SAMPLES[rtype]
    store.upsert_many([resource])
    for name, value in queries.items():
        assert _ids(store, rtype, (name, value)) == [resource["id"]], name
        param = SEARCH_PARAMS[rtype][name]
        miss = {"token": "no-such-code", "reference": "Nobody/none", "string": "zzzz",
                "date": "1901-01-01"}[param.type]
        assert _ids(store, rtype, (name, miss)) == [], name


def test_token_system_and_value_forms(store: FhirStore) -> None:
    store.upsert_many([patient(1), patient(2), {"resourceType": "Patient", "id": "nosys",
                                                "identifier": [{"value": "GAGM58000001"}]}])
    assert sorted(_ids(store, "Patient", ("identifier", "GAGM58000001"))) == ["nosys", "pat-1"]
    assert _ids(store, "Patient", ("identifier", f"{NAM}|GAGM58000001")) == ["pat-1"]
    assert _ids(store, "Patient", ("identifier", "|GAGM58000001")) == ["nosys"]
    assert sorted(_ids(store, "Patient", ("identifier", f"{NAM}|"))) == ["pat-1", "pat-2"]
    assert sorted(_ids(store, "Patient", ("identifier", "GAGM58000001,GAGM58000002"))) == ["nosys", "pat-1", "pat-2"]
    assert _ids(store, "Patient", ("identifier", "GAGM58000001"), ("identifier", f"{NAM}|")) == ["pat-1"]


def test_date_prefixes_on_encounter_periods(store: FhirStore) -> None:
    store.upsert_many([
        encounter(1, "p", start="2026-03-01T08:00:00-05:00", end="2026-03-01T11:00:00-05:00"),  # 13:00-16:00Z
        encounter(2, "p", start="2026-03-02T22:00:00Z", end="2026-03-03T03:00:00Z"),
        encounter(3, "p", start="2026-03-05T10:00:00Z"),  # ongoing
    ])

    def ids(value: str) -> list[str]:
        return sorted(_ids(store, "Encounter", ("date", value)))

    assert ids("2026-03-01") == ["enc-1"]
    assert ids("2026-03-05") == []  # an ongoing visit (no end) is not within one day…
    assert ids("ge2026-03-05") == ["enc-3"]  # …but it is "after" it
    assert ids("eq2026-03") == ["enc-1", "enc-2"]
    assert ids("ge2026-03-03") == ["enc-3"]  # enc-2 starts before the 3rd: not "≥" per R4
    assert ids("gt2026-03-02") == ["enc-2", "enc-3"]
    assert ids("sa2026-03-04") == ["enc-3"]
    assert ids("le2026-03-02") == ["enc-1"]
    assert ids("lt2026-03-03") == ["enc-1", "enc-2"]
    assert ids("eb2026-03-02") == ["enc-1"]
    assert ids("ne2026-03-01") == ["enc-2", "enc-3"]
    assert ids("ap2026-03-03") == ["enc-2"]
    assert ids("2026-03-01T13:30:00Z") == []  # a point inside a longer visit does not contain it
    assert ids("ge2026-03-01T12:59:59Z") == ["enc-1", "enc-2", "enc-3"]
    assert ids("lt2026-03-01T09:00:00-04:00") == []
    assert _ids(store, "Encounter", ("date", "ge2026-03-01"), ("date", "le2026-03-02")) == ["enc-1"]


def test_last_updated_id_and_sorting(store: FhirStore) -> None:
    store.upsert_many([patient(1), patient(2)])
    stamp = store.read("Patient", "pat-2").resource["meta"]["lastUpdated"]  # type: ignore[index]
    store.upsert_many([patient(3)])
    assert "pat-3" in _ids(store, "Patient", ("_lastUpdated", f"ge{stamp}"))
    assert _ids(store, "Patient", ("_lastUpdated", "lt2000-01-01")) == []
    assert _ids(store, "Patient", ("_lastUpdated", f"ge{stamp[:4]}"), ("_id", "pat-1,pat-3")) == ["pat-1", "pat-3"]
    assert _ids(store, "Patient", ("_sort", "-_lastUpdated"))[0] == "pat-3"


def test_keyset_paging_visits_every_match_once_even_during_updates(store: FhirStore) -> None:
    store.upsert_many([patient(n) for n in range(25)])
    seen: list[str] = []
    params: list[tuple[str, str]] = [("_count", "7")]
    while True:
        _q, page = store.search("Patient", params)
        seen += [e.id for e in page.entries]
        if page.next is None:
            break
        store.upsert_many([patient(99 + len(seen))])  # a newcomer lands at the end
        params = [("_count", "7"), ("_page", page.next.encode())]
    assert len(seen) == len(set(seen)) == 25 + 3
    assert page.previous is not None
    _q, back = store.search("Patient", [("_count", "7"), ("_page", page.previous.encode())])
    assert [e.id for e in back.entries] == seen[-7 - len(page.entries):-len(page.entries)]


def test_include_follows_references_of_the_page(store: FhirStore) -> None:
    store.upsert_many([patient(1), patient(2), encounter(1, "pat-1"), encounter(2, "pat-1"), encounter(3, "pat-2"),
                       condition(1, "pat-1", "enc-1")])
    _q, page = store.search("Encounter", [("_include", "Encounter:subject"), ("patient", "pat-1")])
    assert [e.id for e in page.included] == ["pat-1"]
    _q, page = store.search("Condition", [("_include", "Condition:encounter"), ("_include", "Condition:patient")])
    assert sorted(e.id for e in page.included) == ["enc-1", "pat-1"]


def test_bad_parameters_are_400_and_unknown_ones_depend_on_strictness(store: FhirStore) -> None:
    for params in ([("date", "yesterday")], [("_count", "-1")], [("identifier:text", "x")], [("_sort", "name")],
                   [("_page", "garbage")], [("patient", "a/b/c")], [("_summary", "true")], [("identifier", "")]):
        with pytest.raises(StoreError) as err:
            store.search("Encounter", params)
        assert err.value.status == 400, params
    q, _page = store.search("Encounter", [("colour", "blue"), ("status", "finished")])
    assert q.ignored == ["colour"]
    assert q.link_params == [("status", "finished")]
    with pytest.raises(StoreError) as err:
        store.search("Encounter", [("colour", "blue")], strict=True)
    assert err.value.status == 400
    assert "blue" not in err.value.message


def test_count_summary_and_total(store: FhirStore) -> None:
    store.upsert_many([patient(n) for n in range(3)])
    _q, page = store.search("Patient", [("_summary", "count")])
    assert page.total == 3
    assert page.entries == []
    q, page = store.search("Patient", [("_count", "5000")])
    assert q.count == 1000
    assert len(page.entries) == 3


def test_readers_and_a_writer_run_concurrently(store: FhirStore) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                _q, page = store.search("Encounter", [("patient", "pat-1"), ("_count", "1000")])
                assert page.total == len(page.entries)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for batch in range(10):
        store.upsert_many([encounter(batch * 50 + n, "pat-1") for n in range(50)])
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert store.search("Encounter", [("patient", "pat-1"), ("_summary", "count")])[1].total == 500


# -- building blocks -----------------------------------------------------------------------------
def test_date_ranges_follow_precision() -> None:
    assert date_range("2026") == (date_range("2026-01-01")[0], date_range("2026-12-31")[1])
    lo, hi = date_range("2026-02")
    assert instant_text(lo) == "2026-02-01T00:00:00.000Z"
    assert instant_text(hi) == "2026-02-28T23:59:59.999Z"
    lo, hi = date_range("2026-03-01T08:15:00-05:00")
    assert instant_text(lo) == "2026-03-01T13:15:00.000Z"
    assert hi - lo == 999
    assert date_range("2026-03-01T13:15:00.5Z")[1] - date_range("2026-03-01T13:15:00.5Z")[0] == 99
    assert period_range({"start": "2026-03-01"})[1] == MAX_MS
    assert split_prefix("ge2026") == ("ge", "2026")
    assert split_prefix("2026") == ("eq", "2026")
    for bad in ("2026-13", "2026-02-30", "tomorrow", "2026-03-01T25:00:00Z", "2026-03-01T10:00:00+15:00"):
        with pytest.raises(ValueError):
            date_range(bad)


def test_extraction_reads_identifiers_codings_references_and_names() -> None:
    rows = extract(patient(1, family="Bérubé"))
    assert ("Patient.identifier", NAM, "GAGM58000001") in rows.tokens
    assert ("Patient.active", "", "true") in rows.tokens
    assert ("Patient.family", "berube", "Bérubé") in rows.strings
    assert ("Patient.organization", "Organization", "csss-sommets") in rows.refs
    enc = extract(encounter(1, "pat-1"))
    assert ("Encounter.patient", "Patient", "pat-1") in enc.refs
    assert ("Encounter.class", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "EMER") in enc.tokens
    not_patient = encounter(2, "x") | {"subject": {"reference": "Group/g1"}}
    assert not any(key == "Encounter.patient" for key, _t, _i in extract(not_patient).refs)
    assert split_reference("http://h/fhir/Patient/1/_history/2") == ("Patient", "1")
    assert split_reference("urn:uuid:0f0e") is None
    assert split_reference("#contained") is None
    assert normalise("  Marie-Ève CÔTÉ ") == "marie-eve cote"
    assert split_escaped("a\\,b,c\\|d", ",") == ["a,b", "c|d"]


def test_extraction_skips_unreadable_values_and_follows_a_params_change(monkeypatch: pytest.MonkeyPatch) -> None:
    cond = condition(1, "pat-1", "enc-1") | {
        "onsetDateTime": "not a date", "recordedDate": "2026-03", "subject": None,
        "code": {"coding": [{"system": "s", "code": "c"}, None, "bare"]},
        "identifier": [{"system": "s", "value": None}, {"value": "v1"}]}
    rows = extract(cond)
    assert {(k, lo, hi) for k, lo, hi in rows.dates} == {("Condition.recorded-date", *date_range("2026-03"))}
    assert not any(key in ("Condition.patient", "Condition.subject") for key, _t, _i in rows.refs)
    assert {r for r in rows.tokens if r[0] == "Condition.code"} == {("Condition.code", "s", "c"),
                                                                   ("Condition.code", "", "bare")}
    assert {r for r in rows.tokens if r[0] == "Condition.identifier"} == {("Condition.identifier", "", "v1")}
    pat = patient(1) | {"name": [{"family": None, "given": ["Zoé", 3]}], "address": [{"city": "Magog"}]}
    assert {r for r in extract(pat).strings if r[0] == "Patient.given"} == {("Patient.given", "zoe", "Zoé")}
    assert not any(key == "Patient.x-city" for key, _n, _r in extract(pat).strings)
    # the per-type extraction plan is precompiled: a changed parameter table must still apply
    monkeypatch.setitem(params_table._BY_TYPE, "Patient",
                        (*params_table._BY_TYPE["Patient"], SearchParam("x-city", "string", ("address.city",))))
    assert ("Patient.x-city", "magog", "Magog") in extract(pat).strings
    assert split_escaped("s\\|x|v", "|") == ["s|x", "v"]


@pytest.mark.slow
def test_upsert_throughput_10000_patient_encounter_pairs(store: FhirStore, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted: run with ``-s`` to see the rates (batches of 500, as the sink does)."""
    import time

    pairs = [r for n in range(10_000) for r in (patient(n), encounter(n, f"pat-{n}"))]
    rates = {}
    for label, batch in (("insert", pairs), ("replay", pairs), ("update", [r | {"language": "fr-CA"} for r in pairs])):
        start = time.perf_counter()
        changed = sum(c for i in range(0, len(batch), 500) for _r, c in store.upsert_many(batch[i:i + 500]))
        rates[label] = len(batch) / (time.perf_counter() - start)
        assert changed == (0 if label == "replay" else len(batch))
    with capsys.disabled():
        print("\nupsert resources/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    assert store.counts() == {"Patient": 10_000, "Encounter": 10_000}

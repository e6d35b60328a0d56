"""Helpers of the pharmacy tests (message builders, a store with the pharmacy search parameters,
enrollment) and the tests of the pharmacy data tables (code maps, policy, the DPD tool).

The search parameters of MedicationStatement / MedicationAdministration are the entries proposed for
gateway/fhirstore/params.py (PROPOSED_PARAMS); until they are there, :func:`pharmacy_store` adds them
for the test only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.defisante.enrollment import enroll_resources, parse_enroll
from gateway.errors import ConfigError
from gateway.eventlog.base import OutRecord
from gateway.fhirstore import FhirStore
from gateway.fhirstore import params as store_params
from gateway.hl7v2 import parse
from gateway.pharmacy import PharmacyRules
from gateway.pharmacy.config import load_policy
from gateway.settings import Settings, load_settings
from mappings import IdentifierSystems, MapContext, MapResult, Profiles
from mappings.pharmacy import codemaps, dpd, map_pharmacy

PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
NAM = "GAGH52561503"  # Hélène Gagnon, 1952-06-15 (fictitious)
_PAT = ("Patient",)
PROPOSED_PARAMS: dict[str, tuple[store_params.SearchParam, ...]] = {
    "MedicationStatement": (
        store_params.SearchParam("identifier", "token", ("identifier",)),
        store_params.SearchParam("patient", "reference", ("subject",), _PAT),
        store_params.SearchParam("subject", "reference", ("subject",)),
        store_params.SearchParam("status", "token", ("status",)),
        store_params.SearchParam("category", "token", ("category",)),
        store_params.SearchParam("code", "token", ("medicationCodeableConcept",)),
        store_params.SearchParam("effective", "date", ("effectivePeriod",)),
        store_params.SearchParam("source", "reference", ("informationSource",)),
    ),
    "MedicationAdministration": (
        store_params.SearchParam("identifier", "token", ("identifier",)),
        store_params.SearchParam("patient", "reference", ("subject",), _PAT),
        store_params.SearchParam("subject", "reference", ("subject",)),
        store_params.SearchParam("status", "token", ("status",)),
        store_params.SearchParam("code", "token", ("medicationCodeableConcept",)),
        store_params.SearchParam("effective-time", "date", ("effectiveDateTime", "effectivePeriod")),
        store_params.SearchParam("performer", "reference", ("performer.actor",)),
        store_params.SearchParam("request", "reference", ("request",)),
    ),
}


# -- messages -------------------------------------------------------------------------------------
def seg(sid: str, **fields: str) -> str:
    """One ER7 segment from ``f<n>=value`` keywords (field numbers from 1)."""
    last = max(int(k[1:]) for k in fields)
    values = [""] * last
    for key, text in fields.items():
        values[int(key[1:]) - 1] = text
    return sid + "|" + "|".join(values)


def message(kind: str, control_id: str, pharmacy: str, segments: list[str], *, when: str = "20260301103500",
            pid: str = f"{NAM}^^^RAMQ^JHN", name: str = "Gagnon^Hélène") -> bytes:
    """An ER7 message (UTF-8): MSH (MSH-4 = ``pharmacy``), PID, then ``segments``."""
    head = [f"MSH|^~\\&|RXPHARM|{pharmacy}|PIVOT|CISSS-LAURENTIDES|{when}||{kind}|{control_id}|P|2.5.1"
            "||||||UNICODE UTF-8|FR",
            f"PID|1||{pid}||{name}||19520615|F"]
    return ("\r".join([*head, *segments]) + "\r").encode("utf-8")


def dispense(control_id: str, din: str, drug: str, when: str, *, pharmacy: str = "PHARM-STE-AGATHE",
             rx: str = "RX1", fill: str = "1", quantity: str = "30", days: str = "30", atc: str = "",
             pharmacist: str = "O-12345^Côté^Geneviève^^^^^^OPQ", **kw: str) -> bytes:
    """An RDS^O13 with one ORC/TQ1 (days' supply in TQ1-6)/RXD group."""
    code = f"{din}^{drug}^DIN" + (f"^{atc}^^ATC" if atc else "")
    groups = [seg("ORC", f1="RE", f3=rx, f9=when), seg("TQ1", f1="1", f3="QD", f6=f"{days}^d") if days else "",
              seg("RXD", f1=fill, f2=code, f3=when, f4=quantity, f5="CO^comprimé", f7=rx, f10=pharmacist)]
    return message("RDS^O13^RDS_O13", control_id, pharmacy, [g for g in groups if g], when=when, **kw)


def stop_order(control_id: str, din: str, drug: str, when: str, *, pharmacy: str = "PHARM-STE-AGATHE",
               rx: str = "RX1") -> bytes:
    """An RDE^O11 discontinuing prescription ``rx`` (ORC-1 DC, ORC-15 = ``when``)."""
    return message("RDE^O11^RDE_O11", control_id, pharmacy,
                   [seg("ORC", f1="DC", f3=rx, f5="DC", f9=when, f15=when),
                    seg("RXE", f2=f"{din}^{drug}^DIN", f10="30", f11="CO^comprimé", f15=rx)], when=when)


def profile(control_id: str, when: str, items: list[tuple[str, str, str, str]], *,
            pharmacy: str = "PHARM-STE-AGATHE") -> bytes:
    """An RDS^O13 with ZPR|1|PROFILE: one group per (din, drug, rx, dispense date)."""
    segments = [f"ZPR|1|PROFILE|{when}"]
    for din, drug, rx, handed in items:
        segments += [seg("ORC", f1="RE", f3=rx), seg("TQ1", f1="1", f3="QD", f6="30^d"),
                     seg("RXD", f1="1", f2=f"{din}^{drug}^DIN", f3=handed, f4="30", f5="CO^comprimé", f7=rx)]
    return message("RDS^O13^RDS_O13", control_id, pharmacy, segments, when=when)


def map_raw(raw: bytes) -> MapResult:
    msg = parse(raw)
    return map_pharmacy(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2026, 1, 1, tzinfo=UTC)))


# -- store and program ----------------------------------------------------------------------------
def add_pharmacy_params(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store accept the pharmacy types for this test (PROPOSED_PARAMS, when missing)."""
    for rtype, items in PROPOSED_PARAMS.items():
        if rtype not in store_params.SEARCH_PARAMS:
            monkeypatch.setitem(store_params._BY_TYPE, rtype, items)
            monkeypatch.setitem(store_params.SEARCH_PARAMS, rtype,
                                {p.name: p for p in (*store_params.COMMON_PARAMS, *items)})


def open_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FhirStore]:
    """A real FhirStore that accepts the pharmacy types; a generator for the test modules' fixtures."""
    add_pharmacy_params(monkeypatch)
    store = FhirStore(tmp_path / "fhir.sqlite")
    yield store
    store.close()


def settings_for(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "var")


def sink(store: FhirStore, result: MapResult) -> None:
    """What the store sink does with a mapped message: upsert every resource."""
    store.upsert_many(result.resources)


def feed(rules: PharmacyRules, raw: bytes, received_at: str) -> tuple[MapResult, list[OutRecord]]:
    """Map, sink into the store (as the store sink does) and run the rules."""
    result = map_raw(raw)
    assert rules.store is not None
    sink(rules.store, result)
    return result, rules.on_mapped(result, received_at)


def enroll(store: FhirStore, patient_id: str, *, case_manager: str = "cm-1") -> list[dict[str, Any]]:
    """Enroll ``patient_id`` (its Patient must be in the store) with a case manager."""
    patient = store.read("Patient", patient_id).resource
    assert patient is not None
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "caseManager", "valueReference": {"reference": f"Practitioner/{case_manager}"}},
        {"name": "start", "valueDateTime": "2026-01-15T09:00:00-05:00"}]}
    resources = enroll_resources(patient, parse_enroll(body), None, [])
    store.upsert_many(resources)
    return resources


# -- tests of the tables --------------------------------------------------------------------------
def test_tables_load_and_name_the_documented_systems() -> None:
    codemaps.check_all()
    assert codemaps.drug_systems()["DIN"] == "http://hl7.org/fhir/NamingSystem/ca-hc-din"
    assert codemaps.drug_systems()["HC-DIN"] == codemaps.DIN_SYSTEM
    table = codemaps.din_table()
    assert table.synthetic
    assert not table.reject_unknown
    assert all(din.startswith("991") for din in table.entries)  # synthetic range, never a real product
    labels = {c.id: c.prefixes for c in codemaps.high_risk_classes()}
    assert labels == {"opioids": ("N02A",), "benzodiazepines": ("N05BA", "N05CD"), "antipsychotics": ("N05A",),
                      "anticoagulants": ("B01A",), "insulins": ("A10A",)}
    policy = load_policy()
    assert policy.active_count_threshold == 10
    assert policy.multi_pharmacy_window_days == 30


@pytest.mark.parametrize(("name", "bad"), [
    ("din-atc.json", {"din_pattern": "^[0-9]{8}$", "unmapped": {"mode": "accept"},
                      "elements": {"123": {"atc": "N02AA05"}}}),
    ("din-atc.json", {"din_pattern": "^[0-9]{8}$", "unmapped": {"mode": "maybe"}, "elements": {}}),
    ("atc-classes.json", {"high_risk": [{"id": "x", "prefixes": ["not-atc"], "label": "x"}]}),
    ("order-control.json", {"target": "", "unmapped": {"mode": "fixed", "code": "finished"}, "elements": {}}),
    ("messages.json", {"messages": {"RDS": {"O13": "NOPE"}}, "structures": {}}),
])
def test_a_malformed_table_refuses_to_start(monkeypatch: pytest.MonkeyPatch, name: str, bad: dict[str, Any]) -> None:
    real = codemaps.load_json
    monkeypatch.setattr(codemaps, "load_json", lambda f: bad if f == name else real(f))
    for cached in (codemaps.din_table, codemaps.high_risk_classes, codemaps.concept_map, codemaps.messages):
        cached.cache_clear()
    try:
        with pytest.raises(ConfigError, match=name.removesuffix(".json")):
            codemaps.check_all()
    finally:
        monkeypatch.undo()
        for cached in (codemaps.din_table, codemaps.high_risk_classes, codemaps.concept_map, codemaps.messages):
            cached.cache_clear()
        codemaps.check_all()


def test_the_dpd_tool_joins_drug_and_ther_on_drug_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "drug.txt").write_text(
        '"1","Human","HUMAN","99100001","OXY","","N","","1","01-JAN-2020","0"\n'
        '"2","Human","HUMAN","99100002","BAD","","N","","1","01-JAN-2020","0"\n'
        '"3","Human","HUMAN","12","SHORT","","N","","1","01-JAN-2020","0"\n', encoding="latin-1")
    (tmp_path / "ther.txt").write_text('"1","N02AA05","OXYCODONE","","",""\n"2","??","X"\n', encoding="latin-1")
    assert dpd.main([str(tmp_path / "drug.txt"), str(tmp_path / "ther.txt")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["elements"] == {"99100001": {"atc": "N02AA05", "display": "oxycodone"}}
    assert document["synthetic"] is False

"""Records of two messages can reach a store out of the order they were resolved in (two partitions
of hl7v2.in, two instances): every copy carries its resolution's rank, and the store keeps, per
resource, the copy of the latest resolution (the scale-out test found a site record re-activated by
its own registration, mapped after the A08 that had linked it)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.envelope import fhir_envelope
from gateway.eventlog.base import Record
from gateway.eventlog.embedded import EmbeddedLog
from gateway.fhirstore import FhirStore
from gateway.hl7v2 import parse
from gateway.identity import IdentityResolver
from gateway.metrics import Metrics
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.workers import StoreSink
from mappings import MapContext, map_message
from tests.test_pharmacy_support import PROFILES, SYSTEMS


def _patient(active: bool, family: str) -> dict[str, object]:
    return {"resourceType": "Patient", "id": "p-site", "active": active, "name": [{"family": family}]}


def test_a_copy_ranked_below_the_stored_one_changes_nothing(tmp_path: Path) -> None:
    store = FhirStore(tmp_path / "fhir.sqlite")
    try:
        assert store.upsert_many([_patient(False, "Linked")], [5])[0][1] is True
        assert store.upsert_many([_patient(True, "Registered")], [3])[0][1] is False  # older news
        assert store.read("Patient", "p-site").resource["active"] is False
        assert store.upsert_many([_patient(True, "Later")], [7])[0][1] is True
        assert store.read("Patient", "p-site").resource["name"] == [{"family": "Later"}]
        # in one batch, out of order: the higher rank wins wherever it stands
        store.upsert_many([_patient(True, "Nine"), _patient(True, "Eight")], [9, 8])
        assert store.read("Patient", "p-site").resource["name"] == [{"family": "Nine"}]
        # unranked writes (operations, alerts) are always applied
        store.upsert_many([_patient(True, "Unranked")])
        assert store.read("Patient", "p-site").resource["name"] == [{"family": "Unranked"}]
    finally:
        store.close()


def test_the_store_sink_keeps_the_latest_resolution_whatever_the_arrival_order(tmp_path: Path) -> None:
    """Two messages of one person resolved in order, their records consumed in the reverse order."""
    resolver = IdentityResolver(None)
    when = datetime.now(UTC)
    first, second = (parse(er_message(7, control_id=cid)) for cid in ("C1", "C2"))
    r1 = resolver.resolve(map_message(first, MapContext(PROFILES.for_message(first), SYSTEMS, when)))
    second_result = map_message(second, MapContext(PROFILES.for_message(second), SYSTEMS, when))
    patient2 = next(r for r in second_result.resources if r["resourceType"] == "Patient")
    patient2["name"] = [{"family": "Changed-by-the-second"}]
    r2 = resolver.resolve(second_result)
    assert 0 < r1.resolved < r2.resolved
    settings = load_settings(data_dir=tmp_path / "var")
    store = FhirStore(tmp_path / "fhir.sqlite")
    log = EmbeddedLog(tmp_path / "log.sqlite")
    sink = StoreSink(settings, log, Metrics(), store)
    try:
        def records(result: object, base: int) -> list[Record]:
            return [Record("pivot.fhir.Patient", 0, base + n, str(res["id"]).encode(),
                           fhir_envelope(res, site="HSA", control_id=result.control_id, sender=result.sender,
                                         received_at="2026-12-07T12:00:00Z", resolved=result.resolved), {}, 0)
                    for n, res in enumerate(r for r in result.resources if r["resourceType"] == "Patient")]

        sink.handle(records(r2, 10))
        sink.handle(records(r1, 20))  # the first message's copy arrives last
        pid = str(r2.patient_id)
        assert store.read("Patient", pid).resource["name"] == patient2["name"]
    finally:
        log.close()
        store.close()
        resolver.close()

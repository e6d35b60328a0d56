"""Défi Santé on the embedded defaults, in one process: a simulated year of 2,000 people from three
sites goes through the intake; the candidate list is checked against the simulation's ground
truth, then clients are enrolled over the HTTP API and ER arrivals at every site raise alerts."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from connectors.base import Origin
from gateway.app import Gateway, create_app
from gateway.defisante import codes
from gateway.defisante.arrival import ZONE, visit_message
from gateway.drain import wait_drained
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.simulate import Simulation, simulate
from gateway.topics import HL7V2_BULK
from gateway.workers import BulkMappingWorker
from tests.test_defisante_support import Oracle, alert_events, enroll_body, feed_oracle, wait_until

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas/defisante/alert-event.schema.json").read_text())
ALERTS = "pivot.defisante.alerts"
ORIGIN = Origin("test", "defisante")


@dataclass
class World:
    gw: Gateway
    http: TestClient
    sim: Simulation
    oracle: Oracle
    candidates: list[dict[str, Any]]
    used: set[str]

    def candidate(self) -> dict[str, Any]:
        """A listed candidate no other test has enrolled yet (its Patient resource)."""
        for entry in self.candidates:
            pid = entry["resource"]["id"]
            if pid not in self.used:
                self.used.add(pid)
                return self.http.get(f"/fhir/Patient/{pid}").json()  # type: ignore[no-any-return]
        raise AssertionError("no candidate left")

    def send(self, raw: bytes) -> None:
        assert self.gw.intake.receive(raw, ORIGIN).code == "AA"

    def events(self, patient_id: str) -> list[dict[str, Any]]:
        return [e for e in alert_events(self.gw.log, ALERTS) if e["patient"] == f"Patient/{patient_id}"]

    def enroll(self, patient_id: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"/fhir/Patient/{patient_id}/$defi-sante-enroll", json=body)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sim = simulate(sites=3, people=2000, days=365, seed=11)
    gw = Gateway(load_settings(data_dir=tmp_path_factory.mktemp("defisante") / "var"))
    gw.start_workers()
    for _when, raw in sim.messages:
        assert gw.intake.receive(raw, ORIGIN).code == "AA"
    assert wait_drained(gw, timeout_s=240)
    http = TestClient(create_app(gw))
    bundle = http.get("/fhir/Patient/$defi-sante-candidates").json()
    yield World(gw, http, sim, feed_oracle(sim.messages), bundle.get("entry", []), set())
    http.close()
    gw.close()


def _ext(entry: dict[str, Any]) -> dict[str, list[Any]]:
    (ext,) = [e for e in entry["extension"] if e["url"] == codes.CANDIDATE_EXT]
    out: dict[str, list[Any]] = {}
    for part in ext["extension"]:
        value = next(v for k, v in part.items() if k.startswith("value"))
        out.setdefault(part["url"], []).append(value)
    return out


def _nam(patient: dict[str, Any]) -> str:
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == codes.NAM_SYSTEM))


def test_candidates_match_the_ground_truth(world: World) -> None:
    matches = [e for e in world.candidates if e["search"]["mode"] == "match"]
    listed = {_nam(e["resource"]) for e in matches}
    truth = set(world.sim.truth["frequent_nams"])
    precision, recall = len(listed & truth) / len(listed), len(listed & truth) / len(truth)
    print(f"candidates: {len(listed)} listed, precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= 0.95
    assert recall >= 0.95
    assert not listed & set(world.sim.truth["pregnancy_nams"])  # no pregnancy-only repeater
    assert set(world.sim.truth["merged_nams"]) & truth <= listed | (truth - listed)
    for rank, entry in enumerate(matches, start=1):
        ext = _ext(entry)
        nam = _nam(entry["resource"])
        assert ext["rank"] == [rank]
        assert ext["status"] == ["candidate"]
        assert ext["visitCount"][0] >= 4
        assert ext["visitCount"][0] == len(world.oracle.visits[nam])  # every site, merges honoured
        assert ext["site"]
        assert 1 <= len(ext["mainDiagnosis"]) <= 3
        assert ext["includedBy"]
    counts = [_ext(e)["visitCount"][0] for e in matches]
    assert counts == sorted(counts, reverse=True)
    text = world.http.get("/fhir/Patient/$defi-sante-candidates", params={"_format": "csv"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["patient_id"] for r in rows] == [e["resource"]["id"] for e in matches]


def test_exclusion_rules_are_data_chosen_per_request(world: World) -> None:
    none = world.http.get("/fhir/Patient/$defi-sante-candidates", params={"exclusion": "none"}).json()
    listed = {_nam(e["resource"]) for e in none["entry"] if e["search"]["mode"] == "match"}
    pregnant = {n for n in world.sim.truth["pregnancy_nams"] if len(world.oracle.visits[n]) >= 4}
    assert pregnant
    assert pregnant <= listed  # without the rule they would be listed: the rule is what keeps them out
    minors = world.http.get("/fhir/Patient/$defi-sante-candidates",
                            params={"exclusion": "pregnancy,minor", "threshold": "1", "top": "10000"}).json()
    births = [e["resource"]["birthDate"] for e in minors["entry"] if e["search"]["mode"] == "match"]
    assert births
    assert all(b <= "2007-12-31" for b in births)
    bad = world.http.get("/fhir/Patient/$defi-sante-candidates", params={"exclusion": "nope"})
    assert bad.status_code == 400
    assert bad.json()["resourceType"] == "OperationOutcome"


def test_enroll_is_one_idempotent_write_published_and_listed_apart(world: World) -> None:
    patient = world.candidate()
    pid = patient["id"]
    body = enroll_body(extra=({"name": "pharmacist", "valueReference": {"reference": "Practitioner/pharm-1"}},
                              {"name": "member", "part": [
                                  {"name": "role", "valueCode": "addiction-worker"},
                                  {"name": "member", "valueReference": {"reference": "Practitioner/crd-1"}}]}))
    first = world.enroll(pid, body)
    assert {e["response"]["outcome"]["issue"][0]["diagnostics"] for e in first["entry"]} == {"created"}
    again = world.enroll(pid, body)
    assert {e["response"]["outcome"]["issue"][0]["diagnostics"] for e in again["entry"]} == {"unchanged"}
    flag = world.http.get(f"/fhir/Flag/{codes.flag_id(pid)}").json()  # read-your-writes
    assert flag["status"] == "active"
    assert flag["meta"]["versionId"] == "1"
    team = world.http.get(f"/fhir/CareTeam/{codes.careteam_id(pid)}").json()
    roles = {p["role"][0]["coding"][0]["code"] for p in team["participant"]}
    assert roles == {"case-manager", "family-doctor", "pharmacist", "addiction-worker"}
    plan = world.http.get(f"/fhir/CarePlan/{codes.careplan_id(pid)}").json()
    assert plan["careTeam"] == [{"reference": f"CareTeam/{team['id']}"}]
    goal = world.http.get(f"/fhir/{plan['goal'][0]['reference']}").json()
    assert goal["lifecycleStatus"] == "active"
    ids = {"Flag": flag["id"], "Goal": goal["id"], "CarePlan": plan["id"], "CareTeam": team["id"],
           "Consent": codes.consent_id(pid)}
    for rtype, rid in ids.items():
        keys = [r.key for r in world.gw.log.read_all(f"pivot.fhir.{rtype}")]
        assert keys.count(rid.encode()) == 1  # published once: the repeated POST published nothing
    bundles = [json.loads(r.value)["resource"] for r in world.gw.log.read_all("pivot.fhir.Bundle")
               if r.key == pid.encode()]
    assert any({e["resource"]["resourceType"] for e in b["entry"]} >= {"Flag", "CareTeam", "Consent"} for b in bundles)
    listed = world.http.get("/fhir/Patient/$defi-sante-candidates").json()["entry"]
    mine = [e for e in listed if e["resource"]["id"] == pid]
    assert [e["search"]["mode"] for e in mine] == ["include"]
    assert _ext(mine[0])["status"] == ["enrolled"]


def _arrivals(world: World, patient: dict[str, Any], site: str, **kw: Any) -> bytes:
    return visit_message(patient, site=site, when=datetime.now(ZONE) + timedelta(minutes=1), **kw)


def test_arrivals_at_every_site_alert_the_team_once(world: World) -> None:
    patient = world.candidate()
    pid = patient["id"]
    world.enroll(pid, enroll_body("Practitioner/cm-2"))
    doctor = patient["generalPractitioner"][-1]
    visits = {}
    for site in ("HSA", "HLA", "HSJ"):
        raw = _arrivals(world, patient, site, visit=f"VT{site}{pid[:6]}")
        world.send(raw)
        visits[site] = raw
    events = wait_until(lambda: len(e := world.events(pid)) >= 3 and e)
    assert {e["site"] for e in events} == {"CSSS-SOMMETS-HSA", "CSSS-ARGENTEUIL-HLA", "CSSS-RDN-HSJ"}
    for event in events:
        jsonschema.validate(event, SCHEMA)
        assert event["kind"] == "er-arrival"
        assert event["recipients"] == [{"reference": "Practitioner/cm-2"}, doctor]
        comm = world.http.get(f"/fhir/{event['communication']}").json()
        assert comm["recipient"] == event["recipients"]
        assert codes.has_code(comm["category"], "alert", codes.COMM_CATEGORY)
        assert "Douleur thoracique" in comm["payload"][0]["contentString"]
    # a resend (new MSH-10, same visit) and a replay (same message) raise nothing new
    world.send(_arrivals(world, patient, "HSA", visit=f"VTHSA{pid[:6]}", control_id="RESEND-0001"))
    assert world.gw.intake.receive(visits["HLA"], ORIGIN).duplicate
    # an ER registration sent with the site MRN only (no NAM) is still recognised
    world.send(_arrivals(world, patient, "HSJ", visit=f"VTMRN{pid[:6]}", with_nam=False))
    # an A11 cancels one registration; an A03 discharges another; an old visit (backfill) says nothing
    world.send(_arrivals(world, patient, "HLA", visit=f"VTHLA{pid[:6]}", trigger="A11"))
    world.send(_arrivals(world, patient, "HSA", visit=f"VTHSA{pid[:6]}", trigger="A03"))
    world.send(visit_message(patient, site="HSA", visit=f"VTOLD{pid[:6]}", when=datetime.now(ZONE) - timedelta(days=3)))
    assert wait_drained(world.gw, timeout_s=60)
    kinds = sorted(e["kind"] for e in world.events(pid))
    assert kinds == sorted(["er-arrival"] * 4 + ["er-cancelled", "er-discharge"])
    assert len({e["event_id"] for e in world.events(pid)}) == len(kinds)  # one alert per (visit, kind)
    by_kind = {e["kind"]: e for e in world.events(pid)}
    assert by_kind["er-discharge"]["recipients"] == [{"reference": "Practitioner/cm-2"}]
    cancel = world.http.get(f"/fhir/{by_kind['er-cancelled']['communication']}").json()
    assert cancel["inResponseTo"][0]["reference"].startswith("Communication/")
    for event in world.events(pid):
        jsonschema.validate(event, SCHEMA)


def test_the_family_is_told_only_with_consent(world: World) -> None:
    agreed, refused = world.candidate(), world.candidate()
    for patient in (agreed, refused):  # relatives arrive with an ordinary (old) visit: NK1 → RelatedPerson
        world.send(visit_message(patient, site="HSA", visit=f"VK{patient['id'][:8]}",
                                 when=datetime.now(ZONE) - timedelta(days=30),
                                 kin=[("Louise", "SPO"), ("Marc", "CHD")]))
    assert wait_drained(world.gw, timeout_s=60)
    rps = {p["id"]: [e["resource"]["id"] for e in
                     world.http.get("/fhir/RelatedPerson", params={"patient": p["id"]}).json()["entry"]]
           for p in (agreed, refused)}
    assert all(len(v) == 2 for v in rps.values())
    told = rps[agreed["id"]][0]
    world.enroll(agreed["id"], enroll_body("Practitioner/cm-3", family=True, relatives=(told,)))
    world.enroll(refused["id"], enroll_body("Practitioner/cm-3", family=False))
    other = world.http.post(f"/fhir/Patient/{refused['id']}/$defi-sante-enroll",
                            json=enroll_body("Practitioner/cm-3", family=True, relatives=(told,)))
    assert other.status_code == 400  # someone else's relative
    for patient in (agreed, refused):
        world.send(_arrivals(world, patient, "HLA", visit=f"VF{patient['id'][:8]}"))
    wait_until(lambda: len(world.events(agreed["id"])) >= 2 and world.events(refused["id"]))
    assert wait_drained(world.gw, timeout_s=60)
    family = [e for e in world.events(agreed["id"]) if e["kind"] == "er-arrival-family"]
    assert [e["recipients"] for e in family] == [[{"reference": f"RelatedPerson/{told}"}]]
    comm = world.http.get(f"/fhir/{family[0]['communication']}").json()
    assert "Douleur" not in json.dumps(comm, ensure_ascii=False)  # the family never gets the reason
    assert family[0]["reason"] == []
    for event in [*world.events(agreed["id"]), *world.events(refused["id"])]:
        jsonschema.validate(event, SCHEMA)
        if event["kind"] != "er-arrival-family":
            assert not any("RelatedPerson" in r.get("reference", "") for r in event["recipients"])
    assert [e["kind"] for e in world.events(refused["id"])] == ["er-arrival"]


def test_disenroll_ends_everything_and_stops_alerts(world: World) -> None:
    patient = world.candidate()
    pid = patient["id"]
    world.enroll(pid, enroll_body("Practitioner/cm-4"))
    done = world.http.post(f"/fhir/Patient/{pid}/$defi-sante-disenroll")
    assert done.status_code == 200
    status = {e["resource"]["resourceType"]: e["resource"] for e in done.json()["entry"]}
    assert status["Flag"]["status"] == "inactive"
    assert status["Flag"]["period"]["end"]
    assert status["CarePlan"]["status"] == "completed"
    assert status["CareTeam"]["status"] == "inactive"
    assert all(p["period"].get("end") for p in status["CareTeam"]["participant"])
    assert status["Consent"]["status"] == "inactive"
    again = world.http.post(f"/fhir/Patient/{pid}/$defi-sante-disenroll")
    assert {e["response"]["outcome"]["issue"][0]["diagnostics"] for e in again.json()["entry"]} == {"unchanged"}
    world.send(_arrivals(world, patient, "HSJ", visit=f"VD{pid[:8]}"))
    assert wait_drained(world.gw, timeout_s=60)
    assert world.events(pid) == []
    members = world.http.get("/fhir/Group/defi-sante").json()["member"]
    (member,) = [m for m in members if m["entity"]["reference"] == f"Patient/{pid}"]
    assert member["inactive"] is True
    assert member["period"]["end"] == status["Flag"]["period"]["end"]
    never = world.http.post(f"/fhir/Patient/{world.candidate()['id']}/$defi-sante-disenroll")
    assert never.status_code == 404


def test_outcomes_before_and_since_enrollment_match_the_feed(world: World) -> None:
    patient = world.candidate()
    pid, nam = patient["id"], _nam(patient)
    world.enroll(pid, enroll_body("Practitioner/cm-5", start="2025-07-01T00:00:00-04:00"))
    answer = world.http.get("/fhir/Group/defi-sante/$defi-sante-outcomes",
                            params={"date": "2025-12-31T23:59:59-05:00", "patient": pid}).json()
    (client,) = [p for p in answer["parameter"] if p["name"] == "client"]
    got = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in client["part"]}
    cut = datetime(2025, 7, 1)
    arrivals = world.oracle.visits[nam]
    assert got["erVisitsBefore"] == sum(1 for a in arrivals if a < cut)
    assert got["erVisitsSince"] == sum(1 for a in arrivals if a >= cut)
    annual = got["erVisitsSince"] * 365 / got["followUpDays"]
    assert got["erVisitsSinceAnnualised"] == pytest.approx(annual, abs=0.01)
    days_since = sum(max(0.0, (e - max(s, cut)).total_seconds() / 86400) for s, e in world.oracle.stays[nam])
    assert got["hospitalDaysSince"] == pytest.approx(days_since, abs=0.05)
    cohort = world.http.get("/fhir/Group/defi-sante/$defi-sante-outcomes").json()
    clients = [p for p in cohort["parameter"] if p["name"] == "client"]
    (summary,) = [p for p in cohort["parameter"] if p["name"] == "cohort"]
    sums = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in summary["part"]}
    assert sums["clients"] == len(clients) >= 1
    compared = [c for c in clients if {"name": "followUpSufficient", "valueBoolean": True} in c["part"]]
    assert sums["clientsCompared"] == len(compared)
    assert sums["erVisitsBefore"] == sum(
        next(q["valueInteger"] for q in c["part"] if q["name"] == "erVisitsBefore") for c in compared)
    text = world.http.get("/fhir/Group/defi-sante/$defi-sante-outcomes", params={"_format": "csv"}).text
    assert text.splitlines()[-1].startswith("cohort,")


def test_conformance_resources_are_served_read_only(world: World) -> None:
    cs = world.http.get("/fhir/CodeSystem/defi-sante")
    assert cs.status_code == 200
    assert cs.json()["url"] == codes.CODESYSTEM
    sd = world.http.get("/fhir/StructureDefinition", params={"url": codes.CANDIDATE_EXT}).json()
    assert sd["total"] == 1
    assert world.http.get("/fhir/OperationDefinition/defi-sante-enroll").status_code == 200
    assert world.http.get("/fhir/CodeSystem/unknown").status_code == 404
    assert world.http.put("/fhir/CodeSystem/defi-sante", json=cs.json()).status_code == 405


def test_alerts_log_ids_never_health_data(world: World, caplog: pytest.LogCaptureFixture) -> None:
    patient = world.candidate()
    caplog.set_level(logging.DEBUG)
    world.enroll(patient["id"], enroll_body("Practitioner/cm-6"))
    world.send(_arrivals(world, patient, "HSA", visit=f"VL{patient['id'][:8]}"))
    wait_until(lambda: world.events(patient["id"]))
    assert "defisante alert kind=er-arrival" in caplog.text
    for secret in (_nam(patient), patient["name"][0]["family"], "Douleur"):
        assert secret not in caplog.text


def test_an_er_arrival_is_not_queued_behind_a_history_backfill(world: World) -> None:
    """A history file goes in through ``receive_many`` (``pivot ingest``, the file connector): the
    bulk lane, ``hl7v2.bulk``. An ER arrival sent just after it is mapped, and its alert raised, while
    most of that backlog still waits; before the lane, it waited for the whole backlog."""
    patient = world.candidate()
    pid = patient["id"]
    world.enroll(pid, enroll_body("Practitioner/cm-7"))
    assert wait_drained(world.gw, timeout_s=60)
    when = datetime.now(ZONE) - timedelta(days=200)  # last year's visits: no alert of their own
    backlog = [er_message(700_000 + i, control_id=f"HIST{i:06d}", when=when) for i in range(1_500)]
    replies = world.gw.intake.receive_many([(raw, Origin("file", "history.hl7")) for raw in backlog])
    assert {r.code for r in replies} == {"AA"}
    world.send(_arrivals(world, patient, "HSA", visit=f"VBF{pid[:8]}"))
    assert wait_until(lambda: world.events(pid))
    bulk_mapper = next(w for w in world.gw.workers if isinstance(w, BulkMappingWorker))
    waiting = bulk_mapper.lag()  # the backlog not yet mapped
    assert waiting is not None
    assert waiting > len(backlog) // 2
    assert wait_drained(world.gw, timeout_s=180)
    bulk = {rec.headers["msh10"] for rec in world.gw.log.read_all(world.gw.settings.topic(HL7V2_BULK))}
    assert {f"HIST{i:06d}" for i in range(1_500)} <= bulk
    assert [e["kind"] for e in world.events(pid)] == ["er-arrival"]  # the backfill raised nothing

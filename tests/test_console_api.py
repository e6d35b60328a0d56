"""The console's JSON API on an in-process gateway (embedded defaults): a simulated year of three
sites through the intake, two clients enrolled through ``$defi-sante-enroll``; every answer is
checked against the FHIR operations it summarises or against what the test itself sent."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.console.alerts import latest_seq
from gateway.defisante.codes import NAM_SYSTEM
from gateway.security.access import AuditKind
from gateway.security.audit import AccessRecord, build_audit_event
from tests.test_console_support import (
    EXPECTED_SILENT,
    QUIET_SENDER,
    World,
    arrival,
    console_app,
    console_world,
    enroll_body,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = console_world(tmp_path_factory.mktemp("console-api") / "var")
    yield built
    built.http.close()
    built.gw.close()


def _get(world: World, path: str) -> Any:
    resp = world.http.get(path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    return resp.json()


def _candidates_op(world: World) -> list[dict[str, Any]]:
    bundle = world.http.get("/fhir/Patient/$defi-sante-candidates").json()
    out = []
    for entry in bundle.get("entry", []):
        ext = {e["url"]: e for e in entry["extension"][0]["extension"]}
        if ext["status"]["valueCode"] == "candidate":
            sites = [e["valueString"] for e in entry["extension"][0]["extension"] if e["url"] == "site"]
            out.append({"id": entry["resource"]["id"], "rank": ext["rank"]["valueInteger"],
                        "visits": ext["visitCount"]["valueInteger"], "sites": sorted(sites)})
    return out


def test_roster_lists_the_enrolled_clients_with_flag_and_last_visit(world: World) -> None:
    body = _get(world, "/console/api/roster")
    rows = {r["id"]: r for r in body["clients"]}
    assert set(world.enrolled) <= set(rows)
    for pid in world.enrolled:
        row = rows[pid]
        patient = world.http.get(f"/fhir/Patient/{pid}").json()
        assert row["name"] == f"{patient['name'][0]['family']}, {' '.join(patient['name'][0]['given'])}"
        assert row["nam"] == next(i["value"] for i in patient["identifier"] if i["system"] == NAM_SYSTEM)
        assert row["status"] == "active"
        assert row["caseManager"] == "Julie Tremblay, inf. clinicienne"  # console.json names the reference
        assert row["lastVisit"]["site"] in {"CSSS-SOMMETS-HSA", "CSSS-ARGENTEUIL-HLA", "CSSS-RDN-HSJ"}
        assert row["lastVisit"]["siteLabel"].startswith("Hôpital")
    # the audit hook: the answer names every Patient it shows
    assert {r["reference"] for r in body["patient"]} == {f"Patient/{pid}" for pid in rows}


def test_candidates_are_those_of_the_fhir_operation_with_their_reasons(world: World) -> None:
    body = _get(world, "/console/api/candidates")
    expected = _candidates_op(world)
    got = body["candidates"]
    assert [(c["id"], c["rank"], c["visits"]) for c in got] == [(e["id"], e["rank"], e["visits"]) for e in expected]
    assert [sorted(s["site"] for s in c["sites"]) for c in got] == [e["sites"] for e in expected]
    for row in got:
        assert sum(s["visits"] for s in row["sites"]) == row["visits"]
        assert row["visits"] >= body["threshold"] == 4
        assert 1 <= len(row["mainDiagnoses"]) <= 3
        assert all(d["code"] for d in row["mainDiagnoses"])
        assert row["includedBy"].startswith("er-visits >= 4 in the 12 months")
    assert not set(world.enrolled) & {c["id"] for c in got}  # enrolled clients are never candidates
    assert [r["id"] for r in body["rules"]] == ["pregnancy"]
    narrower = _get(world, "/console/api/candidates?threshold=10&top=3")
    assert len(narrower["candidates"]) <= 3
    assert all(c["visits"] >= 10 for c in narrower["candidates"])
    refused = world.http.get("/console/api/candidates?threshold=0")
    assert refused.status_code == 400
    assert "parameter threshold" in refused.text


def test_client_page_puts_visits_outcome_team_and_plan_together(world: World) -> None:
    pid = world.enrolled[0]
    body = _get(world, f"/console/api/clients/{pid}")
    assert body["program"] == "enrolled"
    assert body["enrollment"]["status"] == "active"
    assert body["subject"] == {"reference": f"Patient/{pid}"}
    visits = body["visits"]
    assert visits
    assert [v["arrival"] for v in visits] == sorted(v["arrival"] for v in visits)
    assert set(body["sites"]) == {v["site"] for v in visits}
    # the before/after figures are the operation's, and the timeline holds the same visits
    op = world.http.get(f"/fhir/Group/defi-sante/$defi-sante-outcomes?patient={pid}").json()
    client_part = {p["name"]: p for p in next(x for x in op["parameter"] if x["name"] == "client")["part"]}
    assert body["outcome"]["erVisitsBefore"] == client_part["erVisitsBefore"]["valueInteger"]
    assert body["outcome"]["erVisitsSince"] == client_part["erVisitsSince"]["valueInteger"]
    start = body["enrollment"]["start"]
    assert body["outcome"]["erVisitsSince"] == sum(1 for v in visits if v["arrival"] >= start[:10])
    assert sum(m["visits"] for m in body["months"]) <= len(visits)
    assert any(m["after"] for m in body["months"])
    assert not body["months"][0]["after"]
    roles = {m["role"]: m["name"] for m in body["careTeam"]}
    assert roles == {"case-manager": "Julie Tremblay, inf. clinicienne", "family-doctor": "Dre Marie Bélanger"}
    assert body["carePlan"]["goals"] == [{"text": "Moins de visites à l'urgence", "status": "active"}]
    assert body["consent"]["familyInvolvement"] is False
    assert body["patient"]["familyDoctors"] == ["Dre Marie Bélanger"]


def test_client_page_shows_the_medication_profile_and_dispenses(world: World) -> None:
    """A community pharmacy's RDS^O13 through the intake: the dispense, the profile it builds."""
    from datetime import datetime, timedelta

    from gateway.defisante.arrival import ZONE
    from gateway.pharmacy.samples import dispense_message

    # a candidate (not enrolled: its page is allowed): a NAM-only PID rewrites the Patient without its
    # name today (reported to the pharmacy mapping), which the enrolled clients' tests must not see
    pid, nam = world.candidates[-1]["id"], world.candidates[-1]["nam"]
    when = datetime.now(ZONE) - timedelta(days=3)
    world.send(dispense_message(nam, "99100001", "Metformine 500 mg", when=when, control_id="CONSOLE-RX1"))
    world.drain()
    body = _get(world, f"/console/api/clients/{pid}")
    assert body["dispensesAvailable"] is True
    assert [(d["din"], d["quantity"]) for d in body["dispenses"]] == [("99100001", 30)]
    assert body["dispenses"][0]["when"].startswith(when.strftime("%Y-%m-%d"))
    assert body["available"] is True
    assert [m["din"] for m in body["active"]] == ["99100001"]
    assert "Metformine" in body["active"][0]["medication"]


def test_nobody_outside_the_program_is_shown(world: World) -> None:
    listed = {c["id"] for c in world.candidates} | set(world.enrolled)
    _q, page = world.gw.store.search("Patient", [("_count", "200")])
    outsider = next(e.resource for e in page.entries if e.id not in listed and e.resource)
    for path in (f"/console/api/clients/{outsider['id']}", f"/console/api/clients/{outsider['id']}/enroll-form",
                 "/console/api/clients/no-such-patient"):
        resp = world.http.get(path)
        assert resp.status_code == 404
        assert resp.json()["resourceType"] == "OperationOutcome"
        assert outsider["name"][0]["family"] not in resp.text


def test_enroll_form_offers_the_defaults_and_the_operation_enrolls(world: World) -> None:
    candidate = next(c for c in world.candidates if c["id"] not in world.enrolled)
    form = _get(world, f"/console/api/clients/{candidate['id']}/enroll-form")
    patient = world.http.get(f"/fhir/Patient/{candidate['id']}").json()
    doctor_ref = next(r["reference"] for r in patient["generalPractitioner"] if r["reference"].startswith("Pract"))
    assert form["familyDoctor"]["reference"] == doctor_ref
    assert form["familyDoctor"]["display"] == "Dre Marie Bélanger"
    assert form["familyDoctor"]["licence"] == "1234567"
    assert [m["reference"] for m in form["caseManagers"]][:2] == ["Practitioner/cm-inf", "Practitioner/cm-ts"]
    assert form["enrolled"] is False
    assert form["relatedPersons"] == []
    # what the page posts (enroll.js: the family doctor on file, the consent answer)
    body = enroll_body("Practitioner/cm-ts")
    body["parameter"].append({"name": "familyDoctor", "valueReference": {"reference": doctor_ref}})
    resp = world.http.post(f"/fhir/Patient/{candidate['id']}/$defi-sante-enroll", json=body)
    assert resp.status_code == 201, resp.text
    world.enrolled.append(candidate["id"])
    roster = {r["id"]: r for r in _get(world, "/console/api/roster")["clients"]}
    assert roster[candidate["id"]]["caseManager"] == "Marc Caron, t.s."
    assert candidate["id"] not in {c["id"] for c in _get(world, "/console/api/candidates")["candidates"]}
    assert _get(world, f"/console/api/clients/{candidate['id']}/enroll-form")["enrolled"] is True


def test_an_er_arrival_opens_an_alert_everywhere_and_streams(world: World) -> None:
    pid = world.enrolled[0]
    cursor = latest_seq(world.gw.store)
    arrival(world, pid)
    roster = {r["id"]: r for r in _get(world, "/console/api/roster")["clients"]}
    row = roster[pid]
    assert row["openAlerts"] == 1
    assert row["lastVisit"]["inEr"] is True
    assert row["latestAlert"]["kind"] == "er-arrival"
    assert row["latestAlert"]["open"] is True
    assert row["latestAlert"]["site"] == "CSSS-SOMMETS-HSA"
    listed = _get(world, "/console/api/alerts")["alerts"]
    alert = next(a for a in listed if a["patient"]["id"] == pid)
    assert alert["patient"]["name"] == row["name"]
    assert alert["priority"] == "urgent"
    one = _get(world, f"/console/api/alerts/{alert['id']}")
    assert one["text"].startswith("Défi Santé : arrivée à l'urgence")
    assert one["subject"]["reference"] == f"Patient/{pid}"
    assert world.http.get("/console/api/alerts/unknown-alert").status_code == 404
    client = _get(world, f"/console/api/clients/{pid}")
    assert client["alerts"][0]["id"] == alert["id"]
    assert client["visits"][-1]["inEr"] is True
    # the stream: resumed from before the arrival it sends the alert (ids only), then ends
    quick = TestClient(console_app(world.gw, stream_max_s=1.5, stream_poll_s=0.2))
    with quick:
        text = quick.get(f"/console/api/alerts/stream?after={cursor}").text
        events = [dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
                  for block in text.strip().split("\n\n")]
        assert events[0]["event"] == "ready"
        alerts = [e for e in events if e.get("event") == "alert"]
        assert [json.loads(e["data"]) for e in alerts] == [
            {"id": alert["id"], "kind": "er-arrival", "priority": "urgent", "patient": pid}]
        assert row["name"] not in text  # the stream carries ids only (the page reads the alert, audited)
        last = alerts[-1]["id"]
        again = quick.get("/console/api/alerts/stream", headers={"Last-Event-ID": last}).text
        assert "event: alert" not in again  # resuming from the last id repeats nothing


def test_outcomes_are_the_operation_s_with_names_and_month_series(world: World) -> None:
    body = _get(world, "/console/api/outcomes")
    op = world.http.get("/fhir/Group/defi-sante/$defi-sante-outcomes").json()
    cohort = {p["name"]: p.get("valueInteger", p.get("valueDecimal"))
              for p in next(x for x in op["parameter"] if x["name"] == "cohort")["part"]}
    for name in ("clients", "erVisitsBefore", "erVisitsSince", "erVisitsSinceAnnualised"):
        assert body["cohort"][name] == cohort[name], name
    assert {c["id"] for c in body["clients"]} == set(world.enrolled)
    assert all(c["name"] for c in body["clients"])
    # month 0 is split at the enrollment: two entries, before and after
    assert [p["offset"] for p in body["relative"]] == [*range(-12, 1), *range(0, 13)]
    assert [p.get("part") for p in body["relative"] if p["offset"] == 0] == ["before", "after"]
    assert all(p["clients"] <= len(world.enrolled) for p in body["relative"])
    assert body["relative"][0]["clients"] == body["cohort"]["clientsCompared"]


def test_feed_health_counts_what_each_sender_sent(world: World) -> None:
    time.sleep(1.3)  # QUIET_SENDER's threshold is 1.2 s
    with TestClient(console_app(world.gw)) as fresh:
        body = fresh.get("/console/api/feeds").json()
    rows = {r["sender"]: r for r in body["senders"]}
    senders = {sender for sender, _code in world.sent}
    assert senders <= set(rows)
    for sender in senders:
        day = rows[sender]["day"]
        for code in ("AA", "AE", "AR"):
            assert day[code] == world.sent[(sender, code)], (sender, code)
        assert day["messages"] == sum(n for (s, _c), n in world.sent.items() if s == sender)
        assert rows[sender]["hour"] == day  # everything was sent within the hour
        assert sum(rows[sender]["hourly"]) == day["messages"]
    hsa = rows["URGENCE|CSSS-SOMMETS-HSA"]
    assert hsa["latencyMs"]["count"] == hsa["day"]["AA"]
    assert hsa["latencyMs"]["p50"] is not None
    assert hsa["silent"] is False
    assert hsa["siteLabel"] == "Hôpital Sainte-Agathe"
    assert rows[QUIET_SENDER]["silent"] is True
    assert rows[QUIET_SENDER]["lastMessageAgeSeconds"] > 1.2
    assert rows[EXPECTED_SILENT]["silent"] is True
    assert rows[EXPECTED_SILENT]["lastMessage"] is None
    assert rows["unknown"]["day"]["AR"] == 1  # the garbage frame
    groups = {(g["sender"], g["messageType"]): g["count"] for g in body["quarantine"]["groups"]}
    assert groups == {("URGENCE|CSSS-ARGENTEUIL-HLA", "ADT^A99^ADT_A01"): 1,
                      ("URGENCE|CSSS-SOMMETS-HSA", "ADT^A99^ADT_A01"): 1}
    assert {i["controlId"] for i in body["quarantine"]["items"]} == {"Q9001", "Q9002"}
    assert all(i["id"].startswith("0:") and i["reason"] == "unsupported event code at MSH-9.2"
               for i in body["quarantine"]["items"])
    assert body["deadletters"]["byStage"] == {"parse": 1, "unsupported": 2}
    assert "patient" not in body  # no patient data on the IT page


def test_every_answer_names_its_patients_for_the_audit_trail(world: World) -> None:
    pid = world.enrolled[0]
    for path, expected in (("/console/api/roster", set(world.enrolled)), (f"/console/api/clients/{pid}", {pid})):
        resp = world.http.get(path)
        record = AccessRecord(AuditKind("operation", "R"), 200, "case-manager", "127.0.0.1", "2026-01-01T00:00:00Z",
                              body=resp.content)
        _event, patients = build_audit_event(record)
        assert {p.removeprefix("Patient/") for p in patients} == expected, path


def test_no_health_data_in_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    roster = _get(world, "/console/api/roster")["clients"]
    for path in ("/console/api/candidates", "/console/api/outcomes", "/console/api/alerts", "/console/api/feeds",
                 *(f"/console/api/clients/{r['id']}" for r in roster)):
        _get(world, path)
    world.http.get("/console/api/clients/nobody")
    text = caplog.text
    for row in roster:
        assert row["name"].split(",")[0] not in text
        assert row["nam"] not in text


def test_pages_and_assets_are_local_and_bilingual(world: World) -> None:
    resp = world.http.get("/console", follow_redirects=False)
    assert resp.status_code == 308
    assert resp.headers["location"] == "/console/"
    page = world.http.get("/console/")
    assert page.status_code == 200
    assert '<html lang="fr">' in page.text
    assert '<base href="/console/">' in page.text
    assert 'content="/fhir"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    cached = world.http.get("/console/", headers={"If-None-Match": page.headers["etag"]})
    assert cached.status_code == 304
    assert world.http.get("/console/static/../app.py").status_code == 404
    assert world.http.get("/console/static/nope.js").status_code == 404
    static = Path(__file__).resolve().parents[1] / "gateway" / "console" / "static"
    import re

    from gateway.console.assets import FILES

    shipped = {".json", ".yaml", ".html", ".js", ".css"}  # pyproject's package-data patterns
    assert {p.name for p in static.iterdir() if p.is_file() and p.suffix != ".py"} == {*FILES, "index.html"}
    assert {Path(name).suffix for name in FILES} <= shipped
    for path in static.iterdir():
        if path.suffix in shipped:
            urls = set(re.findall(r"https?://[^\s'\"`)]+", path.read_text(encoding="utf-8")))
            assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)  # a namespace, never fetched
            served = world.http.get(f"/console/static/{path.name}") if path.name != "index.html" else page
            assert served.status_code == 200, path.name

    def keys(node: Any, prefix: str = "") -> set[str]:
        if not isinstance(node, dict) or ("other" in node and set(node) <= {"zero", "one", "two", "few", "many",
                                                                            "other"}):
            return {prefix}  # a string, or its plural forms (chosen by Intl.PluralRules)
        return {k for name, child in node.items() for k in keys(child, f"{prefix}.{name}" if prefix else name)}

    fr = json.loads((static / "fr.json").read_text(encoding="utf-8"))
    en = json.loads((static / "en.json").read_text(encoding="utf-8"))
    assert keys(fr) == keys(en)
    used = set()
    for js in static.glob("*.js"):
        used |= set(re.findall(r"\bt\('([a-zA-Z0-9_.-]+)'", js.read_text(encoding="utf-8")))
    html = (static / "index.html").read_text(encoding="utf-8")
    used |= set(re.findall(r'data-i18n(?:-label)?="([^"]+)"', html))
    assert used - keys(fr) == set()

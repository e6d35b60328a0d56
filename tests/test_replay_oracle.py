"""Issue #12 item 7: a real ADT stream through the MLLP listener of ``pivot serve``, checked against
an independent model of the expected record.

The feed (gateway/simulate_stream.py) has what real feeds do: A08s that repeat only what changed,
``""`` deletes, an A08 after the A03, a second site's sparser PIDs, a late A08 (older event time,
sent last), v2.8 senders (PID-40), look-alike test patients. Each message comes with what it said.

The oracle below is written from the update-semantics table (mappings/README.md) alone — never
calling the gateway's merge: per person and element, the newest statement by event time wins (a
value sets it, ``""`` deletes it, absence says nothing); a visit goes in-progress → finished and an
A08 never reopens it. v2.8 phones (PID-40, personal mobile) are outside the model: it compares the
home and work phones of PID-13/14 only. The store after the feed (read through /fhir) must equal
it element by element, and a second replay of the feed must create no new version.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from gateway.identity.bodies import DUPLICATE_SYSTEM
from gateway.simulate_stream import Sent, stream
from tests.e2e_helpers import END, START, FrameReader, ack_field, entries, search, wait_for

JSON = dict[str, Any]
NAM_SYSTEM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id"
ZONE = ZoneInfo("America/Montreal")
LOOKALIKES = 25


# -- the oracle: the table of mappings/README.md, restated -----------------------------------------------
def expected_people(feed: list[Sent]) -> dict[str, dict[str, str | None]]:
    """Per NAM: element → final value (None: deleted or never sent)."""
    latest: dict[str, dict[str, tuple[datetime, str]]] = {}
    for msg in feed:  # in send order; ties keep arrival order
        if not msg.nam:
            continue
        person = latest.setdefault(msg.nam, {})
        for element, said in msg.said.items():
            if element not in person or msg.at >= person[element][0]:
                person[element] = (msg.at, said)
    return {nam: {el: (said or None) for el, (_at, said) in elements.items()} for nam, elements in latest.items()}


def expected_visits(feed: list[Sent]) -> dict[str, JSON]:
    """Per visit number: status, end, disposition (in-progress → finished; an A08 never reopens)."""
    visits: dict[str, JSON] = {}
    for msg in sorted((m for m in feed if m.visit.get("number")), key=lambda m: m.at):
        visit = visits.setdefault(msg.visit["number"], {"status": "in-progress", "end": None, "disposition": None})
        if msg.trigger == "A03":
            visit.update(status="finished", end=msg.visit["end"], disposition=msg.visit["disposition"])
    return visits


# -- the store, read through /fhir -------------------------------------------------------------------------
def actual_person(base: str, nam: str) -> tuple[dict[str, str | None], JSON]:
    found = [p for p in entries(search(base, "Patient", identifier=f"{NAM_SYSTEM}|{nam}")) if p.get("active")]
    assert len(found) == 1, nam
    patient = found[0]
    phones = {t.get("use"): t["value"].replace(" ", "") for t in patient.get("telecom", [])
              if t.get("system") == "phone" and t.get("use") in ("home", "work")}
    marital = patient.get("maritalStatus", {}).get("coding", [{}])[0].get("code")
    return ({"phone.home": phones.get("home"), "phone.work": phones.get("work"), "marital": marital,
             "gp": "yes" if patient.get("generalPractitioner") else None}, patient)


def actual_visit(base: str, number: str) -> JSON:
    [enc] = entries(search(base, "Encounter", identifier=number))
    end = enc.get("period", {}).get("end")
    disposition = enc.get("hospitalization", {}).get("dischargeDisposition", {}).get("coding", [{}])[0].get("code")
    return {"status": enc["status"], "end": _hl7_minute(end) if end else None, "disposition": disposition,
            "version": enc["meta"]["versionId"], "id": enc["id"]}


def _hl7_minute(instant: str) -> str:
    return f"{datetime.fromisoformat(instant).astimezone(ZONE):%Y%m%d%H%M}"


def send(port: int, feed: list[Sent]) -> list[str]:
    codes: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = FrameReader(sock)
        for msg in feed:
            sock.sendall(START + msg.raw + END)
            codes.append(ack_field(reader.frame(timeout_s=30), "MSA", 1))
    return codes


def total(base: str, rtype: str, **params: str) -> int:
    return int(search(base, rtype, _summary="count", **params).get("total", 0))


def test_replay_matches_the_independent_oracle(serve_factory: Any) -> None:
    feed = stream(people=24, lookalikes=LOOKALIKES, seed=12)
    gw = serve_factory().start()
    assert set(send(gw.mllp_port, feed)) == {"AA"}
    wait_for(lambda: total(gw.base, "Provenance") >= len(feed), timeout_s=120, interval_s=0.3)
    people, visits = expected_people(feed), expected_visits(feed)
    assert any(v is None for p in people.values() for v in p.values())  # the feed does delete things
    versions: dict[str, str] = {}
    for nam, want in people.items():
        got, patient = actual_person(gw.base, nam)
        assert got == {k: want.get(k) for k in got}, nam
        versions[f"Patient/{patient['id']}"] = patient["meta"]["versionId"]
    for number, want in visits.items():
        got = actual_visit(gw.base, number)
        assert {k: got[k] for k in want} == want, number
        versions[f"Encounter/{got['id']}"] = str(got["version"])
    # look-alike test patients: one possible-duplicate Flag per record, not one per pair
    flags = total(gw.base, "Flag", identifier=f"{DUPLICATE_SYSTEM}|", status="active")
    assert flags == LOOKALIKES
    # a second replay of the same feed changes nothing
    provenances = total(gw.base, "Provenance")
    assert set(send(gw.mllp_port, feed)) == {"AA"}
    for ref, version in versions.items():
        now = httpx.get(f"{gw.base}/fhir/{ref}", timeout=10).json()["meta"]["versionId"]
        assert now == version, ref
    assert total(gw.base, "Provenance") == provenances
    assert total(gw.base, "Flag", identifier=f"{DUPLICATE_SYSTEM}|", status="active") == LOOKALIKES

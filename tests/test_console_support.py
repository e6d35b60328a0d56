"""Helpers shared by the console tests (this module holds no test).

``console_world`` builds a gateway on the embedded defaults in one process, feeds it a simulated
year of three sites (through the intake), enrolls two candidates through the FHIR operation (with
a start date in the simulated year, so the before/after figures have both sides), and sends a few
messages the feed-health page must show: an unsupported trigger (quarantine) and garbage (AR).
``ServerThread`` serves any ASGI app with uvicorn on a free loopback port (the page tests).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from connectors.base import Origin
from gateway.app import Gateway, create_app
from gateway.console.config import ConsoleConfig, parse_config
from gateway.defisante.arrival import ZONE, visit_message
from gateway.drain import wait_drained
from gateway.samples import er_message
from gateway.settings import load_settings
from gateway.simulate import simulate
from tests.conftest import free_port

ORIGIN = Origin("test", "console")
FILE_ORIGIN = Origin("file", "history.hl7")
CANARY_FAMILY = "Zyxquanaryx"
QUIET_SENDER = "URGENCE|CSSS-RDN-HSJ"  # its threshold is a second: silent by the time a page loads
EXPECTED_SILENT = "URGENCE|CSSS-PDH-HMB"  # expected, never sends anything


def console_config() -> ConsoleConfig:
    return parse_config({
        "feeds": {"silent_after_minutes": 30, "senders": [
            {"sender": QUIET_SENDER, "label": "Saint-Jérôme — urgence", "silent_after_minutes": 0.02},
            {"sender": EXPECTED_SILENT, "label": "Pays-d’en-Haut — urgence", "silent_after_minutes": 60},
        ]},
        "sites": {"CSSS-SOMMETS-HSA": "Hôpital Sainte-Agathe", "CSSS-ARGENTEUIL-HLA": "Hôpital de Lachute",
                  "CSSS-RDN-HSJ": "Hôpital de Saint-Jérôme"},
        "case_managers": [{"reference": "Practitioner/cm-inf", "display": "Julie Tremblay, inf. clinicienne"},
                          {"reference": "Practitioner/cm-ts", "display": "Marc Caron, t.s."}],
    })


def console_app(gw: Gateway, **options: Any) -> FastAPI:
    """The gateway's own app (security guard included) plus the console router, as app.py will mount it."""
    return create_app(gw, console_options={"config": console_config(), **options})


def enroll_body(case_manager: str = "Practitioner/cm-inf", start: str | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "caseManager", "valueReference": {"reference": case_manager}},
                                    {"name": "goal", "valueString": "Moins de visites à l'urgence"},
                                    {"name": "familyInvolvement", "valueBoolean": False}]
    if start:
        params.append({"name": "start", "valueDateTime": start})
    return {"resourceType": "Parameters", "parameter": params}


def sender_of(raw: bytes) -> str:
    """MSH-3|MSH-4 read by a plain split (the oracle of the feed-health counts), else ``unknown``."""
    head = raw.split(b"\r", 1)[0].decode("latin-1")
    if not head.startswith("MSH"):
        return "unknown"
    fields = head.split(head[3])
    return f"{fields[2].split('^')[0]}|{fields[3].split('^')[0]}"


@dataclass
class World:
    gw: Gateway
    http: TestClient
    candidates: list[dict[str, Any]] = field(default_factory=list)
    enrolled: list[str] = field(default_factory=list)
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (sender, ACK code) → messages

    def send(self, raw: bytes, expect: str = "AA") -> None:
        reply = self.gw.intake.receive(raw, ORIGIN)
        assert reply.code == expect, reply.error
        self.sent[(sender_of(raw), reply.code)] += 1

    def send_file(self, raws: list[bytes]) -> None:
        """A file of messages (``receive_many``: the bulk lane, hl7v2.bulk), each accepted."""
        for raw, reply in zip(raws, self.gw.intake.receive_many([(raw, FILE_ORIGIN) for raw in raws]), strict=True):
            assert reply.code == "AA", reply.error
            self.sent[(sender_of(raw), reply.code)] += 1

    def drain(self) -> None:
        assert wait_drained(self.gw, timeout_s=60)


def console_world(data_dir: Path, headers: dict[str, str] | None = None, **settings: Any) -> World:
    """The simulated year ends today (so a live arrival does not move the candidates' window);
    ``settings``: more ``load_settings`` overrides (auth), ``headers``: sent with every API call."""
    today = datetime.now(ZONE).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=365)
    sim = simulate(sites=3, people=300, days=365, seed=7, frequent=0.06, start=start.replace(tzinfo=None))
    gw = Gateway(load_settings(data_dir=data_dir, **settings))
    gw.start_workers()
    world = World(gw, TestClient(console_app(gw), headers=headers))
    for _when, raw in sim.messages:
        world.send(raw)
    world.drain()
    http = world.http
    found = http.get("/console/api/candidates").json()["candidates"]
    world.candidates = found
    for row, days in zip(found[:2], (150, 220), strict=True):
        when = (start + timedelta(days=days, hours=9)).isoformat()
        resp = http.post(f"/fhir/Patient/{row['id']}/$defi-sante-enroll", json=enroll_body(start=when))
        assert resp.status_code in (200, 201), resp.text
        world.enrolled.append(row["id"])
    world.send(er_message(9001, trigger="A99", control_id="Q9001"), expect="AR")  # unknown trigger: quarantine
    world.send(er_message(9002, trigger="A99", control_id="Q9002"), expect="AR")
    world.send(b"this is not HL7", expect="AR")
    world.send_file([er_message(9100 + i, control_id=f"F{9100 + i}") for i in range(6)])  # a feed's file: counted too
    world.drain()
    return world


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a daemon thread (no access log)."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console-uvicorn", daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def arrival(world: World, patient_id: str, site: str = "HSA") -> str:
    """Send an ER registration (A04, now) of a stored Patient at ``site``, and wait until it is mapped."""
    patient = world.http.get(f"/fhir/Patient/{patient_id}").json()
    world.send(visit_message(patient, site=site, when=datetime.now(ZONE)))
    world.drain()
    return patient_id


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium driven by Playwright; a missing browser FAILS the test (never a skip)."""
    import pytest

    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make browser` installs Debian's chromium "
                    "(CI runs it before the tests)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

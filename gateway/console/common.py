"""What the console reads (``ConsoleSource``, satisfied by ``gateway.app.Gateway``) and shared shapes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from gateway.console.config import ConsoleConfig
from gateway.defisante.codes import JSON
from gateway.defisante.register import Code, Visit
from gateway.defisante.service import DefiSante
from gateway.eventlog.base import EventLog
from gateway.fhirstore import FhirStore
from gateway.settings import Settings

_IN_ER_MS = 72 * 3_600_000
_OPEN = frozenset({"arrived", "triaged", "in-progress", "onleave", "unknown"})


class ConsoleSource(Protocol):
    """The parts of a gateway the console reads (the Gateway of gateway.app has them all)."""

    settings: Settings
    store: FhirStore
    log: EventLog
    defisante: DefiSante


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def code_json(code: Code) -> JSON:
    return {"code": code.code, "display": code.display, "system": code.system}


def in_er(visit: Visit, now: int) -> bool:
    """Still in the ER: no departure, an open status, arrived in the last 72 hours."""
    return not visit.departure and visit.status in _OPEN and visit.arrival_ms is not None and \
        0 <= now - visit.arrival_ms <= _IN_ER_MS


def visit_json(visit: Visit | None, config: ConsoleConfig, now: int) -> JSON | None:
    """One ER visit as the pages show it (arrival and departure as the site wrote them)."""
    if visit is None:
        return None
    return {"encounter": visit.encounter_id, "arrival": visit.arrival, "departure": visit.departure,
            "site": visit.site, "siteLabel": config.sites.get(visit.site, ""), "status": visit.status,
            "inEr": in_er(visit, now), "reasons": [code_json(c) for c in visit.reasons],
            "diagnoses": [code_json(c) for c in visit.diagnoses]}

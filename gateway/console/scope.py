"""The console as one caller may see it (rule 3 of gateway/security/boundary.py).

Each API answer is computed from a :class:`ScopedSource`: the gateway's store and log, and the
program through :class:`~gateway.defisante.scoped.ScopedProgram` (candidates, outcomes and their
figures over the clients the caller sees). The answers that list clients straight from the store
(the roster, the alerts, the alert stream, one client's page) keep only the clients the caller
sees; a client it does not see is a 404, as if unknown. An unbound caller (no organisation: the
program's case managers) sees every client of the program.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.console.common import ConsoleSource
from gateway.console.people import refs
from gateway.defisante.codes import JSON
from gateway.defisante.scoped import ScopedProgram
from gateway.defisante.service import DefiSante
from gateway.errors import StoreError
from gateway.eventlog.base import EventLog
from gateway.fhirstore import FhirStore
from gateway.security.boundary import Boundary
from gateway.settings import Settings


@dataclass(slots=True)
class ScopedSource:
    """A :class:`ConsoleSource` whose program is seen through one caller's boundary."""

    settings: Settings
    store: FhirStore
    log: EventLog
    defisante: DefiSante
    boundary: Boundary


def scoped(src: ConsoleSource, boundary: Boundary) -> ScopedSource:
    return ScopedSource(src.settings, src.store, src.log, ScopedProgram(src.defisante, boundary), boundary)


def unknown() -> StoreError:
    return StoreError("no Défi Santé client or candidate with this id", status=404, issue_code="not-found")


def require_client(boundary: Boundary, *patient_ids: str) -> None:
    """404 (as for an unknown id) unless the caller sees every one of these clients."""
    if not all(boundary.sees_client(pid) for pid in patient_ids if pid):
        raise unknown()


def seen_rows(boundary: Boundary, body: JSON, key: str) -> JSON:
    """``body`` with only the rows of ``body[key]`` (each with an ``id``) about clients the caller sees."""
    if boundary.audience is None:
        return body
    rows = [row for row in body.get(key) or [] if boundary.sees_client(str(row.get("id") or ""))]
    return {**body, key: rows, "patient": refs([str(r["id"]) for r in rows])}

"""The program as one caller may see it: :class:`DefiSante` limited by the privacy boundary.

The HTTP routes (``$defi-sante-candidates``, ``$defi-sante-outcomes``, ``Group/defi-sante``,
``$defi-sante-enroll``/``-disenroll``) and the console build one :class:`ScopedProgram` per request
from the caller's :class:`~gateway.security.boundary.Boundary` (rule 3 of boundary.py):

- candidates, the cohort Group, outcomes: only the clients the caller sees; ranks are renumbered
  among them and totals count them (a gap or a network-wide total would tell that others exist);
  ``$defi-sante-outcomes?patient=`` for a client it does not see answers as for one never enrolled;
- enroll / disenroll: the program's staff only (403 for an organisation's client, whoever the client).

An unbound caller (no organisation: the program's own systems, hospital IT) gets the service's
answers unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.defisante import candidates as cand
from gateway.defisante import outcomes
from gateway.defisante.codes import JSON
from gateway.defisante.service import CandidateList, DefiSante
from gateway.fhirstore import Outcome
from gateway.security.boundary import Boundary


class ScopedProgram(DefiSante):
    """The same service (its store, log, configuration and register cache), seen through ``boundary``."""

    def __init__(self, service: DefiSante, boundary: Boundary) -> None:  # shares, does not call super().__init__
        self.__dict__.update(service.__dict__)  # share the state, not a copy (the register cache above all)
        self.boundary = boundary
        self._service = service

    @property
    def unbound(self) -> bool:
        return self.boundary.audience is None

    def candidates(self, query: cand.Query, exclusions: list[str] | None = None) -> CandidateList:
        found = self._service.candidates(query, exclusions)
        if self.unbound:
            return found
        sees = self.boundary.sees_client
        listed = [replace(row, rank=n) for n, row in enumerate((r for r in found.result.candidates
                                                                 if sees(r.person_id)), start=1)]
        enrolled = [row for row in found.result.enrolled if sees(row.person_id)]
        kept = {row.person_id for row in [*listed, *enrolled]}
        result = replace(found.result, candidates=listed, enrolled=enrolled, total=len(listed))
        return CandidateList(result, {k: v for k, v in found.patients.items() if k in kept},
                             {k: v for k, v in found.nams.items() if k in kept})

    def outcomes(self, as_of: str | None = None,
                 patient: str | None = None) -> tuple[list[outcomes.ClientOutcome], int]:
        lines, as_of_ms = self._service.outcomes(as_of, patient)
        if self.unbound:
            return lines, as_of_ms
        if patient and not self.boundary.sees_client(patient):
            return [], as_of_ms
        return [line for line in lines if self.boundary.sees_client(line.patient_id)], as_of_ms

    def group(self) -> JSON:
        group = self._service.group()
        if self.unbound:
            return group
        members = [m for m in group.get("member") or []
                   if self.boundary.sees_client(str(m["entity"]["reference"]).removeprefix("Patient/"))]
        out = {k: v for k, v in group.items() if k != "member"}
        out["quantity"] = len(members)
        return {**out, "member": members} if members else out

    def enroll(self, patient_id: str, body: Any, headers: Mapping[str, str]) -> list[Outcome]:
        self.boundary.require_program("enrollment in Défi Santé")
        return self._service.enroll(patient_id, body, headers)

    def disenroll(self, patient_id: str, body: Any, headers: Mapping[str, str]) -> list[Outcome]:
        self.boundary.require_program("ending a Défi Santé enrollment")
        return self._service.disenroll(patient_id, body, headers)

"""The program's part of the shared state: which writes reach the register (gateway.eventlog.state.register).

A program resource is a Flag, CarePlan, CareTeam or Consent whose id is the deterministic id of
its client (codes.py): those the enroll/disenroll operations write, and the alert rules read. Any
store write of one — the operations, the FHIR API, a transaction Bundle, the store sink — is handed
to the register by :class:`RegisterListener` (a store listener); the register keeps only newer
content. The operations also register their own result directly (``force``), and fail with a 503
when the shared state is unreachable, so an enrollment that returned is seen by every instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from gateway.defisante import codes
from gateway.defisante.codes import JSON, ref_id
from gateway.eventlog.state.db import StateUnavailable
from gateway.eventlog.state.register import Entry, ProgramRegister
from gateway.fhirstore.writer import Outcome

log = logging.getLogger("pivot.defisante")

_ID_OF: dict[str, tuple[str, Callable[[str], str]]] = {  # type → (element naming the client, id of the client's)
    "Flag": ("subject", codes.flag_id),
    "CarePlan": ("subject", codes.careplan_id),
    "CareTeam": ("subject", codes.careteam_id),
    "Consent": ("patient", codes.consent_id),
}
PROGRAM_TYPES = frozenset(_ID_OF)


def is_program(rtype: str, rid: str, body: JSON | None) -> bool:
    """A resource of the program (its id is the deterministic id of its client); a deletion
    (``body`` None) of a program type counts (the register drops only what it holds)."""
    if rtype not in _ID_OF:
        return False
    if body is None:
        return True
    element, id_of = _ID_OF[rtype]
    pid = ref_id(body.get(element), "Patient")
    return pid is not None and id_of(pid) == rid


def entries(resources: Iterable[JSON]) -> list[Entry]:
    """The program resources among ``resources`` (an operation's result), as register entries."""
    return [Entry(str(r["resourceType"]), str(r["id"]), r) for r in resources
            if is_program(str(r.get("resourceType")), str(r.get("id")), r)]


class RegisterListener:
    """The store listener (``store.add_listener(RegisterListener(register))``): program resources
    written to this instance's store go to the register (newer content only)."""

    def __init__(self, register: ProgramRegister) -> None:
        self.register = register

    def __call__(self, changes: list[Outcome]) -> None:
        found = [Entry(c.rtype, c.id, c.resource) for c in changes
                 if c.changed and is_program(c.rtype, c.id, c.resource)]
        if not found:
            return
        try:
            self.register.write(found)
        except StateUnavailable:  # a listener never fails a committed write; ids only in the log
            log.error("defisante register unavailable: %s not registered",
                      ", ".join(f"{e.rtype}/{e.id}" for e in found))


def register_written(register: ProgramRegister | None, resources: list[Any]) -> None:
    """An operation's result into the register (``force``: it is the newest content whatever it is)."""
    if register is not None:
        register.write(entries(resources), force=True)

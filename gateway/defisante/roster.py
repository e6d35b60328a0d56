"""Who is enrolled, and who is on their team: the program's resources read back.

Each enrolled person has one Flag, CarePlan, CareTeam and Consent with deterministic ids
(:mod:`gateway.defisante.codes`), so reading a client's enrollment is four reads by id — from the
shared register (gateway.eventlog.state.register: what every instance's rules read, written when
the enrollment is) when one is given, else from the store; the cohort is every Flag coded
``defi-sante`` (active or ended) in the store.

The family-involvement Consent (see ``enrollment.py``) says who of the family may be told: its
base provision is ``deny``; each nested ``permit`` provision names the RelatedPersons (actor role
IRCP, information recipient) the client agreed to. Anything else — no Consent, a Consent that is
not active, a RelatedPerson not named — means the family is not told.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.defisante import codes
from gateway.defisante.codes import JSON, ref_id
from gateway.errors import StoreError
from gateway.eventlog.state.db import StateUnavailable
from gateway.eventlog.state.register import ProgramRegister
from gateway.fhirstore import FhirStore
from gateway.fhirstore.queries import current_with_token


def read(store: FhirStore, rtype: str, rid: str) -> JSON | None:
    """The current resource, None when unknown or deleted."""
    try:
        return store.read(rtype, rid).resource
    except StoreError as exc:
        if exc.status in (404, 410):
            return None
        raise


@dataclass(slots=True)
class Enrollment:
    """One client's program resources (CarePlan, CareTeam, Consent may be missing if edited away)."""

    patient_id: str
    flag: JSON
    careplan: JSON | None = None
    careteam: JSON | None = None
    consent: JSON | None = None

    @property
    def active(self) -> bool:
        return self.flag.get("status") == "active"

    @property
    def start(self) -> str:
        return str((self.flag.get("period") or {}).get("start") or "")

    @property
    def end(self) -> str:
        return str((self.flag.get("period") or {}).get("end") or "")

    def members(self, role: str) -> list[JSON]:
        """References of the CareTeam participants having ``role`` (our CodeSystem), in order."""
        out: list[JSON] = []
        for part in (self.careteam or {}).get("participant") or []:
            if isinstance(part, dict) and codes.has_code(part.get("role") or [], role) and \
                    isinstance(part.get("member"), dict) and "end" not in (part.get("period") or {}):
                out.append(dict(part["member"]))
        return out

    def family_permitted(self) -> list[JSON]:
        """RelatedPerson references the client agreed may be told (module docstring)."""
        consent = self.consent or {}
        if consent.get("status") != "active":
            return []
        base = consent.get("provision") or {}
        if base.get("type") != "deny":
            return []
        out: list[JSON] = []
        for nested in base.get("provision") or []:
            if not isinstance(nested, dict) or nested.get("type") != "permit":
                continue
            for actor in nested.get("actor") or []:
                ref = (actor or {}).get("reference")
                role = (actor or {}).get("role")
                if isinstance(ref, dict) and ref_id(ref, "RelatedPerson") and \
                        codes.has_code(role, "IRCP", codes.PARTICIPATION):
                    out.append(dict(ref))
        return out


def program(store: FhirStore, register: ProgramRegister | None, rtype: str, rid: str) -> JSON | None:
    """A program resource (Flag, CarePlan, CareTeam, Consent of a client) from the shared register,
    or from the store when the register never held it (no register; data of an older version)."""
    if register is not None:
        try:
            known, body = register.get(rtype, rid)
        except StateUnavailable:  # a 503 for the operations, a retry for the rules (like a busy store)
            raise StoreError("the shared state is unavailable, retry later", status=503,
                             issue_code="transient") from None
        if known:
            return body
    return read(store, rtype, rid)


def enrollment(store: FhirStore, patient_id: str, register: ProgramRegister | None = None) -> Enrollment | None:
    """The client's program resources, None when the person was never enrolled (``register``:
    read from the shared register first, see :func:`program`)."""
    flag = program(store, register, "Flag", codes.flag_id(patient_id))
    if flag is None or not codes.has_code(flag.get("code"), codes.PROGRAM):
        return None
    return Enrollment(patient_id, flag, program(store, register, "CarePlan", codes.careplan_id(patient_id)),
                      program(store, register, "CareTeam", codes.careteam_id(patient_id)),
                      program(store, register, "Consent", codes.consent_id(patient_id)))


def active_enrollment(store: FhirStore, patient_ids: list[str],
                      register: ProgramRegister | None = None) -> Enrollment | None:
    """The active enrollment of the first of ``patient_ids`` that has one (reads Flags by id)."""
    for pid in patient_ids:
        flag = program(store, register, "Flag", codes.flag_id(pid))
        if flag is not None and flag.get("status") == "active" and codes.has_code(flag.get("code"), codes.PROGRAM):
            return enrollment(store, pid, register)
    return None


def cohort(store: FhirStore) -> list[Enrollment]:
    """Every client ever enrolled (active or ended), by Flag start."""
    flags = current_with_token(store, "Flag", "Flag.code", codes.CODESYSTEM, codes.PROGRAM)
    out: list[Enrollment] = []
    for flag in flags:
        pid = ref_id(flag.get("subject"), "Patient")
        if pid and flag.get("id") == codes.flag_id(pid):
            found = enrollment(store, pid)
            if found is not None:
                out.append(found)
    out.sort(key=lambda e: (e.start, e.patient_id))
    return out

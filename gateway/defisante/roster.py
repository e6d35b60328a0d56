"""Who is enrolled, and who is on their team: the program's resources read back from the store.

Each enrolled person has one Flag, CarePlan, CareTeam and Consent with deterministic ids
(:mod:`gateway.defisante.codes`), so reading a client's enrollment is four reads by id; the
cohort is every Flag coded ``defi-sante`` (active or ended).

The family-involvement Consent (see ``enrollment.py``) says who of the family may be told: its
base provision is ``deny``; each nested ``permit`` provision names the RelatedPersons (actor role
IRCP, information recipient) the client agreed to. Anything else — no Consent, a Consent that is
not active, a RelatedPerson not named — means the family is not told.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.defisante import codes
from gateway.defisante.codes import JSON, ref_id
from gateway.errors import StoreError
from gateway.fhirstore import FhirStore


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


def enrollment(store: FhirStore, patient_id: str) -> Enrollment | None:
    """The client's program resources, None when the person was never enrolled."""
    flag = read(store, "Flag", codes.flag_id(patient_id))
    if flag is None or not codes.has_code(flag.get("code"), codes.PROGRAM):
        return None
    return Enrollment(patient_id, flag, read(store, "CarePlan", codes.careplan_id(patient_id)),
                      read(store, "CareTeam", codes.careteam_id(patient_id)),
                      read(store, "Consent", codes.consent_id(patient_id)))


def active_enrollment(store: FhirStore, patient_ids: list[str]) -> Enrollment | None:
    """The active enrollment of the first of ``patient_ids`` that has one (reads Flags by id)."""
    for pid in patient_ids:
        flag = read(store, "Flag", codes.flag_id(pid))
        if flag is not None and flag.get("status") == "active" and codes.has_code(flag.get("code"), codes.PROGRAM):
            return enrollment(store, pid)
    return None


def cohort(store: FhirStore) -> list[Enrollment]:
    """Every client ever enrolled (active or ended), by Flag start."""
    sql = ("SELECT v.body FROM resources r JOIN versions v ON v.rk = r.rk AND v.version = r.version "
           "WHERE r.rtype = 'Flag' AND r.deleted = 0 AND r.rk IN "
           "(SELECT rk FROM idx_token WHERE param = 'Flag.code' AND system = ? AND code = ?)")
    with store.reading() as conn:
        flags = [json.loads(body) for (body,) in conn.execute(sql, (codes.CODESYSTEM, codes.PROGRAM))]
    out: list[Enrollment] = []
    for flag in flags:
        pid = ref_id(flag.get("subject"), "Patient")
        if pid and flag.get("id") == codes.flag_id(pid):
            found = enrollment(store, pid)
            if found is not None:
                out.append(found)
    out.sort(key=lambda e: (e.start, e.patient_id))
    return out

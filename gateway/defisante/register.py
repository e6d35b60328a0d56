"""The ER-visit register: every ER visit of every person, across sites, read from the FHIR store.

A **visit** is an Encounter of class ``EMER`` whose status is neither ``planned``, ``cancelled``
nor ``entered-in-error`` (an A11 cancels the Encounter of its A04; a resent A04 rewrites the same
Encounter id, so it is still one visit). A **stay** is an inpatient Encounter (``IMP``…) with a
start, for hospital days. Arrival and departure are ``period.start``/``period.end``; the site is
the sending facility of ``meta.source`` (``urn:pivot:sender:<app>:<facility>#<MSH-10>``), else the
``serviceProvider``; reasons are ``reasonCode``; diagnoses are the codes of the Conditions the
Encounter lists in ``diagnosis`` or that point to it.

A **person** is a Patient id, after folding the Patients the store knows to be one person:
``Patient.link`` (A40 merges: replaced-by / replaces) and Patients sharing a site identifier (an
MRN sent once without the NAM, once with it) — unless two different NAMs share it (a data
conflict is never folded). The person's id is the Patient with a NAM that was not replaced.

Why not a search: the store's search API pages 1,000 resources at a time and builds Bundles; the register
needs every current Encounter, Condition and Patient at once, so :func:`build` asks the store for
them by name (``gateway.fhirstore.queries.current_projected``: one read-only snapshot, SQLite's JSON
functions cutting out only the elements used). A year of 5,000 people (~3,600 ER visits, ~1,900
Patients) takes about a third of a second on a shared 2-core machine; :class:`RegisterCache` rebuilds
only when the store changed.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import unquote

from gateway.defisante.codes import EMERGENCY, INPATIENT, JSON, NAM_SYSTEM, ref_id
from gateway.fhirstore import FhirStore
from gateway.fhirstore.dates import start_ms as _ms
from gateway.fhirstore.queries import current_projected, store_version

# The elements the register reads, per type: SQLite's JSON functions cut them out of each body, so
# Python decodes a few hundred bytes per resource instead of the whole resource (3x faster).
_FIELDS: dict[str, tuple[str, ...]] = {
    "Patient": ("identifier", "link", "birthDate"),
    "Condition": ("encounter", "code"),
    "Encounter": ("class", "status", "subject", "period", "serviceProvider", "reasonCode", "diagnosis"),
}
_NOT_VISIT = frozenset({"planned", "cancelled", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str
    display: str = ""

    def coding(self) -> JSON:
        out: JSON = {"system": self.system, "code": self.code} if self.system else {"code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class Visit:
    """One ER visit (see the module docstring)."""

    encounter_id: str
    patient_id: str
    person_id: str
    status: str
    arrival: str
    arrival_ms: int | None
    departure: str
    departure_ms: int | None
    site: str
    reasons: tuple[Code, ...]
    diagnoses: tuple[Code, ...]

    def codes(self) -> list[tuple[str, str]]:
        """``(system, code)`` of the diagnoses and reasons (what exclusion rules look at)."""
        return [(c.system, c.code) for c in (*self.diagnoses, *self.reasons)]


@dataclass(frozen=True, slots=True)
class Stay:
    """One inpatient stay (A01 … A03)."""

    encounter_id: str
    person_id: str
    start_ms: int
    end_ms: int | None


@dataclass(slots=True)
class Person:
    id: str
    patient_ids: set[str] = field(default_factory=set)
    birth_date: str = ""
    nam: str = ""


@dataclass(slots=True)
class Register:
    """Visits (by arrival), stays and persons of one store snapshot."""

    version: int
    visits: list[Visit]
    stays: list[Stay]
    persons: dict[str, Person]
    person_of: dict[str, str]

    def person(self, patient_id: str) -> str:
        """The person of a Patient id (itself when unknown)."""
        return self.person_of.get(patient_id, patient_id)

    def visits_by_person(self) -> dict[str, list[Visit]]:
        out: dict[str, list[Visit]] = defaultdict(list)
        for visit in self.visits:
            out[visit.person_id].append(visit)
        return out


def site_of(resource: JSON) -> str:
    """The sending facility of a mapped resource (MSH-4.1 in meta.source), else its serviceProvider id."""
    source = (resource.get("meta") or {}).get("source")
    if isinstance(source, str) and source.startswith("urn:pivot:sender:"):
        parts = source[len("urn:pivot:sender:"):].split("#", 1)[0].split(":")
        if len(parts) >= 2 and parts[1]:
            return unquote(parts[1])
    return ref_id(resource.get("serviceProvider"), "Organization") or ""


def _codes(concepts: object) -> list[Code]:
    out: list[Code] = []
    for item in concepts if isinstance(concepts, list) else [concepts]:
        if not isinstance(item, dict):
            continue
        for c in item.get("coding") or []:
            if isinstance(c, dict) and isinstance(c.get("code"), str):
                out.append(Code(str(c.get("system") or ""), c["code"], str(c.get("display") or "")))
        if not item.get("coding") and isinstance(item.get("text"), str):
            out.append(Code("", item["text"]))
    return out


class _Union:
    """Union-find over Patient ids."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def nam_of(patient: JSON) -> str:
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == NAM_SYSTEM and isinstance(ident.get("value"), str):
            return str(ident["value"])
    return ""


def persons(patients: list[JSON]) -> tuple[dict[str, Person], dict[str, str]]:
    """Fold Patients into persons (module docstring); returns persons by id and Patient id → person id."""
    uf = _Union()
    by_ident: dict[str, set[str]] = defaultdict(set)
    nams: dict[str, str] = {}
    retired: set[str] = set()
    for p in patients:
        pid = str(p["id"])
        uf.find(pid)
        nams[pid] = nam_of(p)
        for link in p.get("link") or []:
            other = ref_id((link or {}).get("other"), "Patient")
            if other and link.get("type") in ("replaced-by", "replaces"):
                uf.union(pid, other)
                if link.get("type") == "replaced-by":
                    retired.add(pid)
        for ident in p.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("system") and ident.get("value") and \
                    ident.get("system") != NAM_SYSTEM:
                by_ident[f"{ident['system']}|{ident['value']}"].add(pid)
    for sharing in by_ident.values():
        if len(sharing) > 1 and len({nams[m] for m in sharing if nams.get(m)}) <= 1:
            first, *rest = sorted(sharing)
            for other in rest:
                uf.union(first, other)
    groups: dict[str, list[str]] = defaultdict(list)
    for pid in uf.parent:
        groups[uf.find(pid)].append(pid)
    by_patient = {str(p["id"]): p for p in patients}
    out: dict[str, Person] = {}
    person_of: dict[str, str] = {}
    for members in groups.values():
        # the person is the Patient with a NAM that was not replaced, else any not replaced
        best = min(members, key=lambda m: (m in retired, not nams.get(m), m))
        person = Person(best, set(members), str((by_patient.get(best) or {}).get("birthDate") or ""),
                        nams.get(best, ""))
        if not person.birth_date:
            person.birth_date = next((str(by_patient[m]["birthDate"]) for m in sorted(members)
                                      if m in by_patient and by_patient[m].get("birthDate")), "")
        out[best] = person
        for m in members:
            person_of[m] = best
    return out, person_of


def build(store: FhirStore) -> Register:
    """Read the register from one snapshot of the store."""
    snapshot = current_projected(store, _FIELDS)
    version = snapshot.version
    patients, conditions, encounters = (snapshot.resources[t] for t in ("Patient", "Condition", "Encounter"))
    people, person_of = persons(patients)
    codes_by_condition = {str(c["id"]): _codes(c.get("code")) for c in conditions}
    by_encounter: dict[str, list[str]] = defaultdict(list)
    for c in conditions:
        target = ref_id(c.get("encounter"), "Encounter")
        if target:
            by_encounter[target].append(str(c["id"]))
    visits: list[Visit] = []
    stays: list[Stay] = []
    for enc in encounters:
        klass = (enc.get("class") or {}).get("code")
        status = str(enc.get("status") or "unknown")
        patient = ref_id(enc.get("subject"), "Patient")
        if patient is None or status in _NOT_VISIT:
            continue
        period = enc.get("period") or {}
        start, end = _ms(period.get("start")), _ms(period.get("end"))
        person = person_of.get(patient, patient)
        if klass in INPATIENT and start is not None:
            stays.append(Stay(str(enc["id"]), person, start, end))
        if klass != EMERGENCY:
            continue
        cond_ids = [ref_id(d.get("condition"), "Condition") for d in enc.get("diagnosis") or [] if isinstance(d, dict)]
        diagnoses: dict[tuple[str, str], Code] = {}
        for cid in [*cond_ids, *by_encounter.get(str(enc["id"]), [])]:
            for code in codes_by_condition.get(cid or "", []):
                diagnoses.setdefault((code.system, code.code), code)
        visits.append(Visit(str(enc["id"]), patient, person, status, str(period.get("start") or ""), start,
                            str(period.get("end") or ""), end, site_of(enc), tuple(_codes(enc.get("reasonCode"))),
                            tuple(diagnoses.values())))
    visits.sort(key=lambda v: (v.arrival_ms or 0, v.encounter_id))
    return Register(version, visits, stays, people, person_of)


class RegisterCache:
    """The register of the latest store snapshot, rebuilt only when the store changed."""

    def __init__(self, store: FhirStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._current: Register | None = None

    def get(self) -> Register:
        with self._lock:
            version = store_version(self.store)
            if self._current is None or self._current.version != version:
                self._current = build(self.store)
            return self._current

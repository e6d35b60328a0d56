"""How people and references read on the console: names, NAM, the display of a reference.

The console shows patient names (its users are the authorised case managers); nothing here logs.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from gateway.defisante.codes import JSON, ref_id
from gateway.defisante.register import nam_of
from gateway.defisante.roster import read
from gateway.fhirstore import FhirStore

_DISPLAY_TYPES = ("Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "Patient", "CareTeam")


def human_name(resource: JSON | None) -> str:
    """``Family, Given`` of the first (official first) HumanName, else its text, else empty."""
    names = [n for n in (resource or {}).get("name") or [] if isinstance(n, dict)]
    if not names:
        return ""
    name = next((n for n in names if n.get("use") == "official"), names[0])
    family = str(name.get("family") or "")
    given = " ".join(str(g) for g in name.get("given") or [])
    if family and given:
        return f"{family}, {given}"
    return family or given or str(name.get("text") or "")


def practitioner_name(resource: JSON | None) -> str:
    """``Dre Marie Bélanger``: prefix, given, family (how a doctor's name is written)."""
    names = [n for n in (resource or {}).get("name") or [] if isinstance(n, dict)]
    if not names:
        return ""
    name = names[0]
    parts = [*(str(p) for p in name.get("prefix") or []), *(str(g) for g in name.get("given") or []),
             str(name.get("family") or "")]
    return " ".join(p for p in parts if p) or str(name.get("text") or "")


def patient_summary(patient: JSON | None, patient_id: str) -> JSON:
    """Id, name, NAM, birth date and gender of a Patient (empty strings when unknown)."""
    patient = patient or {}
    return {"id": patient_id, "name": human_name(patient), "nam": nam_of(patient),
            "birthDate": str(patient.get("birthDate") or ""), "gender": str(patient.get("gender") or "")}


class Names:
    """Reads resources once per request to show references by name (a small per-request cache)."""

    def __init__(self, store: FhirStore, known: dict[str, str] | None = None) -> None:
        self.store = store
        self.known = known or {}  # reference → name, for those the store does not hold (console.json)
        self._cache: dict[tuple[str, str], JSON | None] = {}

    def resource(self, rtype: str, rid: str) -> JSON | None:
        key = (rtype, rid)
        if key not in self._cache:
            self._cache[key] = read(self.store, rtype, rid)
        return self._cache[key]

    def patient(self, patient_id: str) -> JSON:
        return patient_summary(self.resource("Patient", patient_id), patient_id)

    def display(self, reference: Any) -> str:
        """The name of what ``reference`` points to: its display, else the resource's name (a
        PractitionerRole's practitioner), else the console's known names, else the identifier value,
        else the id alone — never ``Practitioner/…``, which means nothing to a case manager."""
        if not isinstance(reference, dict):
            return ""
        if reference.get("display"):
            return str(reference["display"])
        text = str(reference.get("reference") or "")
        rtype = text.split("/", 1)[0]
        rid = ref_id(reference, rtype) if rtype in _DISPLAY_TYPES else None
        found = self.resource(rtype, rid) if rid else None
        if found is not None:
            if rtype in ("Practitioner", "RelatedPerson"):
                name = practitioner_name(found) if rtype == "Practitioner" else human_name(found)
                if name:
                    return name
            if rtype == "Patient":
                return human_name(found)
            if rtype == "PractitionerRole" and isinstance(found.get("practitioner"), dict):
                return self.display(found["practitioner"])
            if isinstance(found.get("name"), str):
                return str(found["name"])
        if text in self.known:
            return self.known[text]
        ident = reference.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
        return text.rsplit("/", 1)[-1] if rtype in _DISPLAY_TYPES else text

    def licence(self, reference: Any) -> str:
        """The first identifier value of a referenced Practitioner (e.g. a CMQ licence number)."""
        rid = ref_id(reference, "Practitioner")
        found = self.resource("Practitioner", rid) if rid else None
        for ident in (found or {}).get("identifier") or []:
            if isinstance(ident, dict) and ident.get("value"):
                return str(ident["value"])
        return ""


def refs(patient_ids: list[str]) -> list[JSON]:
    """The top-level ``patient`` list of every console API answer: the audit trail reads it (its
    ``patients_of`` looks at a ``patient`` element), so each AuditEvent names who was shown."""
    return [{"reference": f"Patient/{pid}"} for pid in dict.fromkeys(p for p in patient_ids if p)]


def sort_key(name: str) -> str:
    """A name as French readers sort it: accents ignored, case ignored (É sorts with E)."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()

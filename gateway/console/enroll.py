"""What the enroll form offers: case managers, the family doctor on file (the default) and the
client's RelatedPersons (who the family-involvement consent may name). The form itself posts
``$defi-sante-enroll`` (Parameters) to the FHIR endpoint: the console adds no write path."""

from __future__ import annotations

from gateway.console.client import person_of
from gateway.console.common import ConsoleSource
from gateway.console.config import ConsoleConfig
from gateway.console.people import Names, human_name
from gateway.defisante.codes import JSON
from gateway.defisante.enrollment import default_family_doctor
from gateway.defisante.roster import cohort
from gateway.errors import StoreError

# the CMQ licence's system (mappings/codemaps/identity.json): a family doctor typed by licence number
CMQ_SYSTEM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-license-physician"


def _case_managers(src: ConsoleSource, config: ConsoleConfig, names: Names) -> list[JSON]:
    """The configured case managers, then those already on a client's CareTeam."""
    out: dict[str, str] = {m.reference: m.display for m in config.case_managers}
    for client in cohort(src.store):
        for member in client.members("case-manager"):
            ref = str(member.get("reference") or "")
            if ref and ref not in out:
                out[ref] = names.display(member)
    return [{"reference": ref, "display": display} for ref, display in out.items()]


def _relatives(src: ConsoleSource, ids: list[str]) -> list[JSON]:
    try:
        _q, page = src.store.search("RelatedPerson", [("patient", ",".join(f"Patient/{i}" for i in ids)),
                                                      ("_count", "50")])
    except StoreError:
        return []
    out = []
    for entry in page.entries:
        rp = entry.resource or {}
        relation = next((str(c.get("display") or c.get("code")) for concept in rp.get("relationship") or []
                         for c in (concept or {}).get("coding") or [] if isinstance(c, dict)), "")
        out.append({"reference": f"RelatedPerson/{entry.id}", "name": human_name(rp), "relationship": relation})
    return out


def enroll_form(src: ConsoleSource, config: ConsoleConfig, patient_id: str) -> JSON:
    person, ids, enrolled = person_of(src, patient_id)
    names = Names(src.store, config.names)
    patient = names.resource("Patient", person)
    doctor = default_family_doctor(patient or {})
    return {
        "patient": names.patient(person),
        "enrolled": enrolled is not None and enrolled.active,
        "familyDoctor": {"reference": doctor["reference"], "display": names.display(doctor),
                         "licence": names.licence(doctor)} if doctor else None,
        "relatedPersons": _relatives(src, ids),
        "licenceSystem": CMQ_SYSTEM,
        "caseManagers": _case_managers(src, config, names),
        "subject": {"reference": f"Patient/{person}"},
    }

"""NK1 -> RelatedPerson (every NK1, including employers and emergency contacts).

IG rows: segments/NK1--RelatedPerson.csv; NK1--Patient.csv for NK1-13 only (-> Patient.contact
.organization). The IG sends NK1 with NK1-3 in (EMR, E, F, I, S) to Patient.contact instead; we
keep one resource type so consent rules (DOMAIN.md: "who may be told what") can always point to a
RelatedPerson. See README, deviations.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Rep, Segment
from mappings.codemaps import codemap
from mappings.datatypes.demographics import xad_to_address, xpn_to_human_name, xtn_to_contact_point
from mappings.datatypes.entities import xon_to_organization
from mappings.datatypes.primitives import value
from mappings.ids import stable_id
from mappings.segments.common import Env

JSON = dict[str, Any]


def _role(rep: Rep) -> JSON | None:
    """One NK1-7 repetition: the contact-role map's coding, with the role's text (CWE-2, else CWE-9)."""
    concept = codemap("contact-role").concept(value(rep.get(1)))
    text = value(rep.get(2)) or value(rep.get(9))
    if text:
        concept = {**(concept or {}), "text": text}
    return concept


def contact_roles(seg: Segment) -> list[JSON]:
    """NK1-7 contact role (HL70131) -> CodeableConcepts that keep the text sent."""
    return [c for c in (_role(r) for r in seg.reps(7)) if c]


def nk1_to_contact_organization(seg: Segment, env: Env) -> tuple[JSON, JSON] | None:
    """NK1-13 organization name (XON) -> (a Patient.contact entry, its Organization): IG
    NK1--Patient contact.organization, with the contact role NK1-7 as relationship; the reference
    carries the name as display. None when NK1-13 is empty. (The person of the NK1 stays a
    RelatedPerson: RelatedPerson has no organization element.)"""
    for rep in seg.reps(13):
        org = xon_to_organization(rep, env.systems, env.site)
        if org is None:
            continue
        contact: JSON = {}
        roles = contact_roles(seg)
        if roles:
            contact["relationship"] = roles
        reference: JSON = {"reference": f"Organization/{org['id']}"}
        if org.get("name"):
            reference["display"] = org["name"]
        contact["organization"] = reference
        return contact, org
    return None


def nk1_to_related_person(seg: Segment, env: Env, patient_id: str, position: int,
                          record_id: str | None = None) -> JSON | None:
    """NK1 -> RelatedPerson: patient, relationship NK1-3 (HL70063) + NK1-7 (contact role, HL70131, its text kept),
    name NK1-2, address NK1-4, telecom NK1-5 home / NK1-6 work, period NK1-8/9, gender NK1-15,
    birthDate NK1-16. Id: the site record id (``record_id``, else the Patient id) + NK1-1 set id
    (else the NK1's position): NK1-1 numbers are per site, and the id must not change when the
    record later receives a NAM. None when the NK1 carries no name, relationship, address nor telecom."""
    names = [n for n in (xpn_to_human_name(r) for r in seg.reps(2)) if n is not None]
    relationship = [c for c in (codemap("relationship").concept(value(r.get(1))) for r in seg.reps(3)) if c]
    relationship += contact_roles(seg)
    addresses = [a for a in (xad_to_address(r) for r in seg.reps(4)) if a is not None]
    telecom = [t for t in (xtn_to_contact_point(r, "home") for r in seg.reps(5)) if t is not None]
    telecom += [t for t in (xtn_to_contact_point(r, "work") for r in seg.reps(6)) if t is not None]
    if not (names or relationship or addresses or telecom):
        return None
    set_id = value(seg.get(1)) or str(position)
    person: JSON = {"resourceType": "RelatedPerson", "id": stable_id("RelatedPerson", record_id or patient_id, set_id),
                    "active": True, "patient": {"reference": f"Patient/{patient_id}"}}
    if relationship:
        person["relationship"] = relationship
    if names:
        person["name"] = names
    if telecom:
        person["telecom"] = telecom
    sex = value(seg.get(15))
    gender = codemap("administrative-sex").get(sex) if sex else None
    if gender is not None:
        person["gender"] = gender.code
    birth = env.time(seg, 16, "date")
    if birth:
        person["birthDate"] = birth
    if addresses:
        person["address"] = addresses
    start, end = env.time(seg, 8), env.time(seg, 9)
    if start or end:
        person["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return person

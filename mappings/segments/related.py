"""NK1 -> RelatedPerson (every NK1, including employers and emergency contacts).

IG row: segments/NK1--RelatedPerson.csv. The IG sends NK1 with NK1-3 in (EMR, E, F, I, S) to
Patient.contact instead; we keep one resource type so consent rules (DOMAIN.md: "who may be told
what") can always point to a RelatedPerson. See README, deviations.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Segment
from mappings.codemaps import codemap
from mappings.datatypes.demographics import xad_to_address, xpn_to_human_name, xtn_to_contact_point
from mappings.datatypes.primitives import value
from mappings.ids import stable_id
from mappings.segments.common import Env

JSON = dict[str, Any]


def nk1_to_related_person(seg: Segment, env: Env, patient_id: str, position: int,
                          record_id: str | None = None) -> JSON | None:
    """NK1 -> RelatedPerson: patient, relationship NK1-3 (HL70063) + NK1-7 (contact role, HL70131),
    name NK1-2, address NK1-4, telecom NK1-5 home / NK1-6 work, period NK1-8/9, gender NK1-15,
    birthDate NK1-16. Id: the site record id (``record_id``, else the Patient id) + NK1-1 set id
    (else the NK1's position): NK1-1 numbers are per site, and the id must not change when the
    record later receives a NAM. None when the NK1 carries no name, relationship, address nor telecom."""
    names = [n for n in (xpn_to_human_name(r) for r in seg.reps(2)) if n is not None]
    relationship = [c for c in (codemap("relationship").concept(value(r.get(1))) for r in seg.reps(3)) if c]
    relationship += [c for c in (codemap("contact-role").concept(value(r.get(1))) for r in seg.reps(7)) if c]
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

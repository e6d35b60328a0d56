"""PID (+ PD1) -> Patient, and the Patient id rule.

IG rows: segments/PID--Patient.csv, segments/PD1--Patient.csv.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import MapError
from gateway.hl7v2.tokenizer import Segment
from mappings.codemaps import codemap
from mappings.datatypes.demographics import xad_to_address, xpn_to_human_name, xtn_to_contact_point
from mappings.datatypes.entities import xcn_to_practitioner, xon_to_organization
from mappings.datatypes.identifiers import (
    MR_TYPES,
    NAM_SYSTEM,
    cx_to_identifier,
    identifier_key,
    type_code,
    valid_nam,
)
from mappings.datatypes.primitives import has_time, value
from mappings.ids import ref_to, stable_id
from mappings.segments.common import Env

JSON = dict[str, Any]
_BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
_YES = frozenset({"Y", "YES", "1", "T", "TRUE"})
_NO = frozenset({"N", "NO", "0", "F", "FALSE"})


def patient_identifiers(seg: Segment, env: Env, *fields: int) -> list[JSON]:
    """Each repetition of the given CX fields (PID-3, then PID-2/PID-4 as sent in v2.3) -> Identifier;
    identical system|value pairs are kept once."""
    out: list[JSON] = []
    seen: set[str] = set()
    for n in fields:
        for rep in seg.reps(n):
            ident = cx_to_identifier(rep, env.systems, env.site, env.zone, env.where(seg, n))
            if ident is not None and identifier_key(ident) not in seen:
                seen.add(identifier_key(ident))
                out.append(ident)
    return out


def patient_key(identifiers: list[JSON]) -> JSON | None:
    """The identifier the Patient id derives from: the valid NAM when present, else the first
    MR-type identifier (MR, MRT, PI), else the first identifier; None without identifiers."""
    for ident in identifiers:
        if ident.get("system") == NAM_SYSTEM and valid_nam(str(ident.get("value", ""))):
            return ident
    return record_key(identifiers)


def record_key(identifiers: list[JSON]) -> JSON | None:
    """The identifier of the *site record* (what the site's ids of visits, next of kin and
    diagnoses hang on): the first MR-type identifier (MR, MRT, PI) outside the NAM system, else the
    first identifier outside it, else the first identifier (a NAM alone). Unlike the Patient id it
    does not change when a NAM is added to the record later (A08/A31), so neither do those ids."""
    site = [i for i in identifiers if i.get("system") != NAM_SYSTEM]
    for ident in site:
        if type_code(ident) in MR_TYPES:
            return ident
    if site:
        return site[0]
    return identifiers[0] if identifiers else None


def patient_id(identifiers: list[JSON]) -> str | None:
    """The Patient logical id: hash of :func:`patient_key` (system|value); None without identifiers."""
    key = patient_key(identifiers)
    return stable_id("Patient", identifier_key(key)) if key is not None else None


def record_id(identifiers: list[JSON]) -> str | None:
    """Hash of :func:`record_key` (system|value): the Patient id the site record has without a NAM."""
    key = record_key(identifiers)
    return stable_id("Patient", identifier_key(key)) if key is not None else None


def _flag(text: str) -> bool | None:
    text = value(text).upper()
    return True if text in _YES else False if text in _NO else None


def pid_to_patient(seg: Segment, env: Env) -> JSON:
    """PID -> Patient (identifier PID-3 (PID-2/4), name PID-5 then PID-9 aliases (use old), birthDate
    PID-7 (+ birthTime extension), gender PID-8, address PID-11, telecom PID-13 home / PID-14 work /
    PID-40 (v2.7+, use from XTN-2), communication PID-15, maritalStatus PID-16, multipleBirth PID-24/25,
    deceased PID-29/30). MapError 101 at PID-3 without any identifier."""
    identifiers = patient_identifiers(seg, env, 3, 2, 4)
    pid = patient_id(identifiers)
    if pid is None:
        raise MapError("no patient identifier in PID-3", hl7_code="101", location=env.where(seg, 3))
    patient: JSON = {"resourceType": "Patient", "id": pid, "identifier": identifiers, "active": True}
    names = [n for n in (xpn_to_human_name(r) for r in seg.reps(5)) if n is not None]
    names += [_alias(n) for n in (xpn_to_human_name(r) for r in seg.reps(9)) if n is not None]
    if names:
        patient["name"] = names
    telecom = [t for t in (xtn_to_contact_point(r, "home") for r in seg.reps(13)) if t is not None]
    telecom += [t for t in (xtn_to_contact_point(r, "work") for r in seg.reps(14)) if t is not None]
    telecom += [t for t in (xtn_to_contact_point(r) for r in seg.reps(40)) if t is not None]
    if telecom:
        patient["telecom"] = telecom
    gender = codemap("administrative-sex").get(value(seg.get(8))) if value(seg.get(8)) else None
    if gender is not None:
        patient["gender"] = gender.code
    birth = value(seg.get(7, 1))
    if birth:
        patient["birthDate"] = env.time(seg, 7, "date")
        if has_time(birth):
            patient["_birthDate"] = {"extension": [{"url": _BIRTH_TIME, "valueDateTime": env.time(seg, 7)}]}
    _deceased(seg, env, patient)
    addresses = [a for a in (xad_to_address(r) for r in seg.reps(11)) if a is not None]
    if addresses:
        patient["address"] = addresses
    marital = codemap("marital-status").concept(value(seg.get(16)))
    if marital is not None:
        patient["maritalStatus"] = marital
    _multiple_birth(seg, patient)
    language = codemap("language").concept(value(seg.get(15)))
    if language is not None:
        patient["communication"] = [{"language": language}]
    return patient


def _alias(name: JSON) -> JSON:
    """PID-9 patient alias -> an extra HumanName (IG PID--Patient name[2]): its XPN-7 use when it maps
    (name-use map), else ``old``: FHIR has no "alias" use, and a reader choosing the name by use
    (official, usual) must never take an alias for the patient's name."""
    return name if "use" in name else {"use": "old", **name}


def _deceased(seg: Segment, env: Env, patient: JSON) -> None:
    when = env.time(seg, 29)
    if when:
        patient["deceasedDateTime"] = when
    elif (flag := _flag(seg.get(30))) is not None:
        patient["deceasedBoolean"] = flag


def _multiple_birth(seg: Segment, patient: JSON) -> None:
    order = value(seg.get(25))
    if order.isdigit() and 0 < int(order) < 100:
        patient["multipleBirthInteger"] = int(order)
    elif (flag := _flag(seg.get(24))) is not None:
        patient["multipleBirthBoolean"] = flag


def pd1_to_general_practitioners(seg: Segment, env: Env) -> list[JSON]:
    """PD1-3 (XON) -> Organization, PD1-4 (XCN, the family doctor, CMQ licence) -> Practitioner.
    Returns the resources; the caller refers to them from Patient.generalPractitioner."""
    out: list[JSON] = []
    for rep in seg.reps(3):
        org = xon_to_organization(rep, env.systems, env.site)
        if org is not None:
            out.append(org)
    for rep in seg.reps(4):
        doctor = xcn_to_practitioner(rep, env.systems, env.site)
        if doctor is not None:
            out.append(doctor)
    return out


def link_general_practitioners(patient: JSON, resources: list[JSON]) -> None:
    """Patient.generalPractitioner = references to the PD1 Organization(s) and Practitioner(s)."""
    if resources:
        patient["generalPractitioner"] = [ref_to(r) for r in resources]

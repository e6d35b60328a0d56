"""FHIR R4 AuditEvents for accesses to patient data, after the IHE BALP basic patterns.

One AuditEvent per HTTP request under ``/fhir`` (but the metadata) and per Défi Santé operation:

- ``type`` DCM/audit-event-type ``rest``; ``subtype`` the FHIR restful interaction (read, vread,
  search-type, create, update, delete, transaction, operation, history-*); ``action`` C/R/U/D/E;
- ``recorded``, ``outcome`` (0 success, 4 minor failure = 4xx, 8 serious failure = 5xx) and
  ``outcomeDesc`` (the HTTP status only);
- ``agent``: the client (DCM 110153 Source Role ID, requestor, client id + network address) and
  the server (DCM 110152 Destination Role ID, Pivot);
- ``source``: Pivot, type 4 (application server);
- ``entity``: every Patient the request touched (role 1 Patient: from the target, the response
  resources' subject/patient references and the Patient resources returned), the resource read or
  written (role 4 Domain Resource), and for searches the query (role 24, base64 as FHIR requires).

``meta.profile`` names the BALP profile (PatientRead, PatientQuery, … or Read, Query, …).
The AuditEvent holds references and the query, never resource content.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.security.access import AuditKind

BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
CLIENT_SYSTEM = "urn:pivot:client-id"
MAX_PATIENTS = 1000
_PATIENT_FIELDS = ("subject", "patient", "beneficiary", "individual", "for")
_PROFILE = {"C": "Create", "R": "Read", "U": "Update", "D": "Delete", "E": "Query"}


@dataclass(slots=True)
class AccessRecord:
    """What the HTTP layer knows of one access (the body is read here, never logged)."""

    kind: AuditKind
    status: int
    client_id: str
    address: str
    recorded: str
    query: str = ""
    body: bytes = b""
    location: str = ""
    denied: str = ""  # why authentication or authorisation failed, when it did


def outcome_code(status: int) -> str:
    """FHIR audit-event-outcome of an HTTP status."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _patient_ref(value: Any) -> str | None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return "/".join(ref.split("/")[:2])
    return None


def patients_of(resource: Any, out: dict[str, None]) -> None:
    """Add to ``out`` the Patients a resource is about (itself, subject, patient…; Bundle entries)."""
    if not isinstance(resource, dict) or len(out) >= MAX_PATIENTS:
        return
    rtype = resource.get("resourceType")
    if rtype == "Bundle":
        for entry in resource.get("entry") or []:
            if isinstance(entry, dict):
                patients_of(entry.get("resource"), out)
        return
    if rtype == "Patient" and isinstance(resource.get("id"), str):
        out[f"Patient/{resource['id']}"] = None
    if rtype == "AuditEvent":  # reading the trail is an access to the clients it names
        for entity in resource.get("entity") or []:
            ref = _patient_ref(entity.get("what")) if isinstance(entity, dict) else None
            if ref is not None:
                out[ref] = None
    for name in _PATIENT_FIELDS:
        value = resource.get(name)
        for item in value if isinstance(value, list) else [value]:
            ref = _patient_ref(item)
            if ref is not None:
                out[ref] = None


def _target(rec: AccessRecord, body: Any) -> str:
    kind = rec.kind
    if kind.rtype and kind.rid:
        return f"{kind.rtype}/{kind.rid}"
    if rec.location:  # create: …/fhir/Type/id/_history/n
        parts = rec.location.split("/fhir/", 1)[-1].split("/")
        if len(parts) >= 2:
            return f"{parts[0]}/{parts[1]}"
    if kind.action in "CU" and isinstance(body, dict) and body.get("resourceType") and body.get("id"):
        return f"{body['resourceType']}/{body['id']}"
    return ""


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def build_audit_event(rec: AccessRecord) -> tuple[dict[str, Any], list[str]]:
    """The AuditEvent of one access and the Patient references it names."""
    body: Any = None
    if rec.body and rec.status < 400:
        try:
            body = json.loads(rec.body)
        except ValueError:
            body = None
    patients: dict[str, None] = {}
    kind = rec.kind
    if kind.rtype == "Patient" and kind.rid:
        patients[f"Patient/{kind.rid}"] = None
    patients_of(body, patients)
    target = _target(rec, body)
    if target.startswith("Patient/"):
        patients[target] = None
    entities: list[dict[str, Any]] = [
        {"what": {"reference": ref}, "type": _coding(ENTITY_TYPE, "1", "Person"),
         "role": _coding(OBJECT_ROLE, "1", "Patient")} for ref in patients]
    if target:
        entities.append({"what": {"reference": target}, "type": _coding(ENTITY_TYPE, "2", "System Object"),
                         "role": _coding(OBJECT_ROLE, "4", "Domain Resource")})
    if kind.action == "E" and kind.subtype.startswith(("search", "history")):
        query = f"{kind.rtype}?{rec.query}" if kind.rtype else f"?{rec.query}"
        entities.append({"type": _coding(ENTITY_TYPE, "2", "System Object"),
                         "role": _coding(OBJECT_ROLE, "24", "Query"),
                         "query": base64.b64encode(query.encode("utf-8")).decode("ascii")})
    elif kind.subtype == "operation" and kind.rid.startswith("$"):
        entities.append({"type": _coding(ENTITY_TYPE, "2", "System Object"),
                         "role": _coding(OBJECT_ROLE, "3", "Report"), "name": kind.rid})
    profile = _PROFILE.get(kind.action, "Query")
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": uuid.uuid4().hex,
        "meta": {"profile": [BALP + ("Patient" if patients else "") + profile]},
        "type": _coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"),
        "subtype": [_coding("http://hl7.org/fhir/restful-interaction", kind.subtype, kind.subtype)],
        "action": kind.action,
        "recorded": rec.recorded,
        "outcome": outcome_code(rec.status),
        "outcomeDesc": f"HTTP {rec.status}" + (f": {rec.denied}" if rec.denied else ""),
        "agent": [
            {"type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
             "who": {"identifier": {"system": CLIENT_SYSTEM, "value": rec.client_id}, "display": rec.client_id},
             "requestor": True,
             **({"network": {"address": rec.address, "type": "2"}} if rec.address else {})},
            {"type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
             "who": {"display": "Pivot"}, "requestor": False},
        ],
        "source": {"site": "Pivot", "observer": {"display": "Pivot gateway"},
                   "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4",
                                    "Application Server")]},
    }
    if entities:
        event["entity"] = entities
    return event, list(patients)

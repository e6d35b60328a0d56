"""Fictitious but realistic FHIR R4 resources for the store tests, and the check that they are valid.

``SAMPLES`` holds one resource per supported type with a value at every indexed search
parameter, and for each parameter a query value that must find it: the store tests run every
(type, parameter) of the search-parameter table against it.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.fhir.models import validate
from gateway.fhirstore.params import SEARCH_PARAMS, indexed_params

JSON = dict[str, Any]
NAM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id"
MRN = "https://pivot.example.org/sites/csss-sommets/mrn"
VISIT = "https://pivot.example.org/sites/csss-sommets/visit"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ICD10CA = "http://hl7.org/fhir/sid/ca-icd-10-ca"
DIN = "http://hl7.org/fhir/NamingSystem/ca-hc-din"


def patient(n: int, family: str = "Gagnon-Lefebvre", given: str = "Marie-Ève", birth: str = "1958-04-12") -> JSON:
    return {
        "resourceType": "Patient", "id": f"pat-{n}",
        "meta": {"source": "https://pivot.example.org/sites/csss-sommets"},
        "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "JHN"}]},
             "system": NAM, "value": f"GAGM58{n:06d}"},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": MRN, "value": f"{700000 + n}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
        "address": [{"line": ["12 rue des Érables"], "city": "Sainte-Agathe-des-Monts", "state": "QC",
                     "postalCode": "J8C 1A1", "country": "CA"}],
        "managingOrganization": {"reference": "Organization/csss-sommets"},
        "generalPractitioner": [{"reference": "Practitioner/dr-cote"}],
    }


def encounter(n: int, patient_id: str, start: str = "2026-03-01T08:15:00-05:00", end: str | None = None,
              cls: str = "EMER", status: str = "finished") -> JSON:
    period = {"start": start} | ({"end": end} if end else {})
    return {
        "resourceType": "Encounter", "id": f"enc-{n}",
        "identifier": [{"system": VISIT, "value": f"V{2026000 + n}"}],
        "status": status,
        "class": {"system": ACT, "code": cls},
        "type": [{"coding": [{"system": "https://pivot.example.org/CodeSystem/visit-type", "code": "urgence"}]}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "participant": [{"individual": {"reference": "Practitioner/dr-cote"}}],
        "period": period,
        "location": [{"location": {"reference": "Location/urg-ste-agathe"}}],
        "serviceProvider": {"reference": "Organization/csss-sommets"},
    }


def condition(n: int, patient_id: str, encounter_id: str, code: str = "J44.1") -> JSON:
    return {
        "resourceType": "Condition", "id": f"cond-{n}",
        "identifier": [{"system": "https://pivot.example.org/condition", "value": f"C{n}"}],
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": ICD10CA, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
        "onsetDateTime": "2026-02-27",
        "recordedDate": "2026-03-01T09:00:00-05:00",
    }


_REF = "Patient/pat-1"
_PRAC = {"reference": "Practitioner/dr-cote"}
_ORG = {"reference": "Organization/csss-sommets"}
_ID = [{"system": "https://pivot.example.org/id", "value": "X-1"}]
_CC = {"coding": [{"system": "https://pivot.example.org/cs", "code": "c1"}]}

# type → (resource, {parameter: a query value that must find it})
SAMPLES: dict[str, tuple[JSON, dict[str, str]]] = {
    "Patient": (patient(1), {
        "identifier": f"{NAM}|GAGM58000001", "name": "gagnon", "family": "GAGNON-LEF", "given": "marie-eve",
        "birthdate": "1958-04", "gender": "female", "active": "true", "organization": "Organization/csss-sommets",
        "general-practitioner": "dr-cote"}),
    "Encounter": (encounter(1, "pat-1"), {
        "identifier": "V2026001", "patient": _REF, "subject": "pat-1", "class": f"{ACT}|EMER", "status": "finished",
        "date": "ge2026-03-01", "type": "urgence", "practitioner": "dr-cote", "participant": "Practitioner/dr-cote",
        "location": "urg-ste-agathe", "service-provider": "csss-sommets"}),
    "Condition": (condition(1, "pat-1", "enc-1"), {
        "identifier": "C1", "patient": "pat-1", "subject": _REF, "encounter": "Encounter/enc-1",
        "code": f"{ICD10CA}|J44.1", "category": "encounter-diagnosis", "clinical-status": "active",
        "onset-date": "2026-02-27", "recorded-date": "ge2026-03-01"}),
    "Practitioner": ({"resourceType": "Practitioner", "id": "dr-cote", "identifier": _ID,
                      "name": [{"family": "Côté", "given": ["Jean-François"], "prefix": ["Dr"]}]},
                     {"identifier": "X-1", "name": "cote", "family": "Côté", "given": "jean"}),
    "PractitionerRole": ({"resourceType": "PractitionerRole", "id": "role-1", "identifier": _ID,
                          "practitioner": _PRAC, "organization": _ORG, "code": [_CC]},
                         {"identifier": "X-1", "practitioner": "dr-cote", "organization": "csss-sommets",
                          "role": "c1"}),
    "Organization": ({"resourceType": "Organization", "id": "csss-sommets", "identifier": _ID,
                      "name": "CSSS des Sommets", "alias": ["Hôpital de Sainte-Agathe"], "type": [_CC]},
                     {"identifier": "X-1", "name": "hopital de sainte", "type": "c1"}),
    "RelatedPerson": ({"resourceType": "RelatedPerson", "id": "rp-1", "identifier": _ID,
                       "patient": {"reference": _REF}, "name": [{"family": "Lefebvre", "given": ["Lucie"]}],
                       "relationship": [_CC]},
                      {"identifier": "X-1", "patient": "pat-1", "name": "lucie", "relationship": "c1"}),
    "Location": ({"resourceType": "Location", "id": "urg-ste-agathe", "identifier": _ID, "status": "active",
                  "name": "Urgence Sainte-Agathe", "managingOrganization": _ORG,
                  "partOf": {"reference": "Location/hopital"}},
                 {"identifier": "X-1", "name": "urgence", "status": "active", "organization": "csss-sommets",
                  "partof": "Location/hopital"}),
    "Provenance": ({"resourceType": "Provenance", "id": "prov-1", "target": [{"reference": _REF}],
                    "recorded": "2026-03-01T08:16:00-05:00", "agent": [{"who": _ORG}],
                    "entity": [{"role": "source", "what": {"reference": "Encounter/enc-1"}}]},
                   {"target": _REF, "patient": "pat-1", "recorded": "2026-03-01", "agent": "csss-sommets",
                    "entity": "Encounter/enc-1"}),
    "Flag": ({"resourceType": "Flag", "id": "flag-1", "identifier": _ID, "status": "active", "code": _CC,
              "subject": {"reference": _REF}, "period": {"start": "2026-01-15"},
              "encounter": {"reference": "Encounter/enc-1"}},
             {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "active", "date": "ge2026-02",
              "encounter": "enc-1", "code": "c1"}),
    "Goal": ({"resourceType": "Goal", "id": "goal-1", "identifier": _ID, "lifecycleStatus": "active",
              "category": [_CC], "description": {"text": "Moins de visites à l'urgence"},
              "subject": {"reference": _REF}, "startDate": "2026-01-20"},
             {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "lifecycle-status": "active",
              "category": "c1", "start-date": "2026-01-20"}),
    "CarePlan": ({"resourceType": "CarePlan", "id": "plan-1", "identifier": _ID, "status": "active",
                  "intent": "plan", "category": [_CC], "subject": {"reference": _REF},
                  "period": {"start": "2026-01-20", "end": "2026-12-31"},
                  "careTeam": [{"reference": "CareTeam/team-1"}]},
                 {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "active", "date": "ap2026-06",
                  "category": "c1", "care-team": "team-1"}),
    "CareTeam": ({"resourceType": "CareTeam", "id": "team-1", "identifier": _ID, "status": "active",
                  "subject": {"reference": _REF}, "period": {"start": "2026-01-20"},
                  "participant": [{"member": _PRAC}]},
                 {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "active",
                  "date": "gt2026-01-01", "participant": "Practitioner/dr-cote"}),
    "Consent": ({"resourceType": "Consent", "id": "consent-1", "identifier": _ID, "status": "active",
                 "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                       "code": "patient-privacy"}]},
                 "category": [_CC], "patient": {"reference": _REF}, "dateTime": "2026-01-20T10:00:00-05:00",
                 "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                            "code": "OPTIN"}]}},
                {"identifier": "X-1", "patient": "pat-1", "status": "active", "date": "2026-01-20",
                 "category": "c1"}),
    "MedicationRequest": ({"resourceType": "MedicationRequest", "id": "rx-1", "identifier": _ID, "status": "active",
                           "intent": "order", "medicationCodeableConcept": {"coding": [{"system": DIN,
                                                                                       "code": "02242903"}]},
                           "subject": {"reference": _REF}, "encounter": {"reference": "Encounter/enc-1"},
                           "authoredOn": "2026-03-01"},
                          {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "active",
                           "code": f"{DIN}|02242903", "encounter": "enc-1", "authoredon": "le2026-03-01"}),
    "MedicationDispense": ({"resourceType": "MedicationDispense", "id": "disp-1", "identifier": _ID,
                            "status": "completed",
                            "medicationCodeableConcept": {"coding": [{"system": DIN, "code": "02242903"}]},
                            "subject": {"reference": _REF}, "whenHandedOver": "2026-03-02T14:00:00-05:00",
                            "authorizingPrescription": [{"reference": "MedicationRequest/rx-1"}]},
                           {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "completed",
                            "code": "02242903", "whenhandedover": "2026-03-02", "prescription": "rx-1"}),
    "MedicationStatement": ({"resourceType": "MedicationStatement", "id": "stmt-1", "identifier": _ID,
                             "status": "active", "category": _CC,
                             "medicationCodeableConcept": {"coding": [{"system": DIN, "code": "02242903"}]},
                             "subject": {"reference": _REF},
                             "effectivePeriod": {"start": "2026-03-02", "end": "2026-04-01"},
                             "informationSource": {"reference": "Organization/pharm-1"}},
                            {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "active",
                             "category": "c1", "code": "02242903", "effective": "ge2026-03-10",
                             "source": "Organization/pharm-1"}),
    "MedicationAdministration": ({"resourceType": "MedicationAdministration", "id": "adm-1", "identifier": _ID,
                                  "status": "completed",
                                  "medicationCodeableConcept": {"coding": [{"system": DIN, "code": "02242903"}]},
                                  "subject": {"reference": _REF}, "effectiveDateTime": "2026-03-02T14:00:00-05:00",
                                  "performer": [{"actor": _PRAC}],
                                  "request": {"reference": "MedicationRequest/rx-1"}},
                                 {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "completed",
                                  "code": "02242903", "effective-time": "2026-03-02",
                                  "performer": "Practitioner/dr-cote", "request": "rx-1"}),
    "Communication": ({"resourceType": "Communication", "id": "comm-1", "identifier": _ID, "status": "completed",
                       "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                                 "code": "alert"}]}],
                       "subject": {"reference": _REF}, "encounter": {"reference": "Encounter/enc-1"},
                       "recipient": [_PRAC], "sender": _ORG, "sent": "2026-03-01T08:16:00-05:00"},
                      {"identifier": "X-1", "patient": "pat-1", "subject": _REF, "status": "completed",
                       "category": "alert", "encounter": "enc-1", "recipient": "Practitioner/dr-cote",
                       "sender": "csss-sommets", "sent": "2026-03-01"}),
    "Subscription": ({"resourceType": "Subscription", "id": "sub-1", "status": "active", "reason": "care plans",
                      "criteria": "CarePlan?category=defi-sante",
                      "channel": {"type": "rest-hook", "endpoint": "https://clinique.example.org/hook",
                                  "payload": "application/fhir+json"}},
                     {"status": "active", "type": "rest-hook", "url": "https://clinique.example.org/hook",
                      "payload": "application/fhir+json", "criteria": "careplan"}),
}


def test_every_sample_is_valid_fhir() -> None:
    for resource, _queries in SAMPLES.values():
        validate(resource)
    validate(encounter(2, "pat-1", end="2026-03-01T12:00:00-05:00"))


def test_samples_cover_every_type_and_indexed_parameter() -> None:
    assert set(SAMPLES) == set(SEARCH_PARAMS)
    for rtype, (resource, queries) in SAMPLES.items():
        assert resource["resourceType"] == rtype
        assert set(queries) == {p.name for p in indexed_params(rtype)}, rtype


@pytest.mark.parametrize("family", ["Bérubé", "O'Neil"])
def test_builders_take_accented_names(family: str) -> None:
    assert validate(patient(9, family=family))["name"][0]["family"] == family

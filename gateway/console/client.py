"""One client's page: ER visits across sites, medications and dispenses, alerts, care team and plan.

Only a person of the program is shown here — enrolled (now or before) or on the current candidate
list — (minimum necessary disclosure): anyone else is a 404, as if unknown. Resources are read for
every Patient id of the person (merges, site charts without the NAM).
"""

from __future__ import annotations

from gateway.console.alerts import alert_json, is_open, recent_alerts, visits_by_encounter
from gateway.console.common import ConsoleSource, iso, visit_json
from gateway.console.config import ConsoleConfig
from gateway.console.outcomes import client_outcome
from gateway.console.people import Names
from gateway.console.series import month_index, monthly
from gateway.defisante import candidates as cand
from gateway.defisante.codes import JSON, ref_id
from gateway.defisante.register import Register
from gateway.defisante.roster import Enrollment, cohort, read
from gateway.errors import StoreError
from gateway.fhirstore import FhirStore

MAX_ROWS = 200


def not_found() -> StoreError:
    return StoreError("no Défi Santé client or candidate with this id", status=404, issue_code="not-found")


def find_enrollment(store: FhirStore, register: Register, person: str) -> Enrollment | None:
    """The person's enrollment (through any of its Patient ids), the active one first."""
    mine = [c for c in cohort(store) if register.person(c.patient_id) == person]
    return next((c for c in mine if c.active), mine[0] if mine else None)


def person_of(src: ConsoleSource, patient_id: str) -> tuple[str, list[str], Enrollment | None]:
    """(person id, its Patient ids, enrollment) of a client or candidate; 404 for anyone else."""
    store = src.store
    if read(store, "Patient", patient_id) is None:
        raise not_found()
    register = src.defisante.register()
    person = register.person(patient_id)
    known = register.persons.get(person)
    ids = sorted(known.patient_ids) if known is not None else [patient_id]
    ids = [person, *[i for i in ids if i != person]]
    enrolled = find_enrollment(store, register, person)
    if enrolled is None:
        listed = src.defisante.candidates(cand.Query()).result.candidates
        if not any(row.person_id == person for row in listed):
            raise not_found()
    return person, ids, enrolled


def _search(store: FhirStore, rtype: str, params: list[tuple[str, str]]) -> list[JSON] | None:
    """Resources of a search, None when this store does not hold the type (yet)."""
    try:
        _q, page = store.search(rtype, params)
    except StoreError as exc:
        if exc.status in (400, 405):
            return None
        raise
    return [e.resource for e in page.entries if e.resource is not None]


def _concept_text(concept: object) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return next((str(c["display"]) for c in codings if c.get("display")),
                next((str(c["code"]) for c in codings if c.get("code")), ""))


def _din(concept: object) -> str:
    for c in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
        if isinstance(c, dict) and "din" in str(c.get("system") or "").lower():
            return str(c.get("code") or "")
    return ""


def medications(store: FhirStore, ids: list[str], names: Names) -> JSON:
    """Active MedicationStatements (the profile) and the latest MedicationDispenses."""
    patients = ",".join(f"Patient/{i}" for i in ids)
    statements = _search(store, "MedicationStatement", [("patient", patients), ("status", "active"),
                                                         ("_count", str(MAX_ROWS))])
    dispenses = _search(store, "MedicationDispense", [("patient", patients), ("_sort", "-_lastUpdated"),
                                                      ("_count", str(MAX_ROWS))])
    active = [{"id": s.get("id"), "medication": _concept_text(s.get("medicationCodeableConcept")),
               "din": _din(s.get("medicationCodeableConcept")),
               "since": str((s.get("effectivePeriod") or {}).get("start") or ""),
               "until": str((s.get("effectivePeriod") or {}).get("end") or ""),
               "asserted": str(s.get("dateAsserted") or ""),
               "dosage": next((str(d.get("text")) for d in s.get("dosage") or [] if isinstance(d, dict)
                               and d.get("text")), ""),
               "source": names.display(s.get("informationSource")) if s.get("informationSource") else ""}
              for s in statements or []]
    active.sort(key=lambda m: str(m["medication"]).casefold())
    fills = [{"id": d.get("id"), "medication": _concept_text(d.get("medicationCodeableConcept")),
              "din": _din(d.get("medicationCodeableConcept")), "status": str(d.get("status") or ""),
              "when": str(d.get("whenHandedOver") or d.get("whenPrepared") or ""),
              "quantity": (d.get("quantity") or {}).get("value"),
              "daysSupply": (d.get("daysSupply") or {}).get("value"),
              "pharmacy": next((names.display(p.get("actor")) for p in d.get("performer") or []
                                if isinstance(p, dict) and p.get("actor")), "")}
             for d in dispenses or []]
    fills.sort(key=lambda d: str(d["when"]), reverse=True)
    return {"available": statements is not None, "active": active,
            "dispensesAvailable": dispenses is not None, "dispenses": fills}


def _role(participant: JSON) -> str:
    for concept in participant.get("role") or []:
        for c in (concept or {}).get("coding") or []:
            if isinstance(c, dict) and c.get("code"):
                return str(c["code"])
    return ""


def care(store: FhirStore, enrolled: Enrollment | None, names: Names) -> JSON:
    """The enrollment, its CareTeam, CarePlan (goals, activities) and the family-involvement consent."""
    if enrolled is None:
        return {"enrollment": None, "careTeam": [], "carePlan": None, "consent": None}
    team = [{"role": _role(p), "name": names.display(p.get("member")),
             "reference": str((p.get("member") or {}).get("reference") or ""),
             "since": str((p.get("period") or {}).get("start") or ""),
             "until": str((p.get("period") or {}).get("end") or "")}
            for p in (enrolled.careteam or {}).get("participant") or [] if isinstance(p, dict)]
    plan = enrolled.careplan
    plan_json: JSON | None = None
    if plan is not None:
        goals = []
        for ref in plan.get("goal") or []:
            gid = ref_id(ref, "Goal")
            goal = read(store, "Goal", gid) if gid else None
            if goal is not None:
                goals.append({"text": _concept_text(goal.get("description")),
                              "status": str(goal.get("lifecycleStatus") or "")})
        plan_json = {"title": str(plan.get("title") or ""), "status": str(plan.get("status") or ""),
                     "start": str((plan.get("period") or {}).get("start") or ""),
                     "end": str((plan.get("period") or {}).get("end") or ""), "goals": goals,
                     "activities": [{"text": str((a.get("detail") or {}).get("description") or ""),
                                     "status": str((a.get("detail") or {}).get("status") or "")}
                                    for a in plan.get("activity") or [] if isinstance(a, dict)]}
    consent = enrolled.consent or {}
    rule = next((str(c.get("code")) for c in (consent.get("policyRule") or {}).get("coding") or []
                 if isinstance(c, dict)), "")
    return {"enrollment": {"status": "active" if enrolled.active else "ended", "start": enrolled.start,
                           "end": enrolled.end, "enrolledAs": enrolled.patient_id},
            "careTeam": team, "carePlan": plan_json,
            "consent": {"status": str(consent.get("status") or ""), "familyInvolvement": rule == "OPTIN",
                        "relatives": [names.display(r) for r in enrolled.family_permitted()]} if consent else None}


def client(src: ConsoleSource, config: ConsoleConfig, patient_id: str, now: int) -> JSON:
    """Everything the client page shows (see the module docstring)."""
    person, ids, enrolled = person_of(src, patient_id)
    store = src.store
    register = src.defisante.register()
    names = Names(store, config.names)
    visits = register.visits_by_person().get(person, [])
    stays = [{"start": iso(s.start_ms), "end": iso(s.end_ms) if s.end_ms is not None else ""}
             for s in register.stays if s.person_id == person]
    patient = names.patient(person)
    doctors = [names.display(r) for r in (names.resource("Patient", person) or {}).get("generalPractitioner") or []
               if ref_id(r, "Practitioner")]
    by_encounter = visits_by_encounter(register)
    alerts = [alert_json(a, open_=is_open(a, by_encounter, now), patient=patient,
                         site_label=config.sites.get(a.site, ""), visits=by_encounter)
              for a in recent_alerts(store, ids, limit=MAX_ROWS)]
    start = month_index(enrolled.start) if enrolled is not None else None
    now_month = month_index(iso(now)) or 0
    end = month_index(enrolled.end) if enrolled is not None and enrolled.end else None
    first = (start if start is not None else now_month) - 12
    return {
        "patient": {**patient, "familyDoctors": doctors},
        "program": "enrolled" if enrolled is not None else "candidate",
        **care(store, enrolled, names),
        "visits": [visit_json(v, config, now) for v in visits],
        "stays": stays,
        "sites": sorted({v.site for v in visits if v.site}),
        "siteLabels": {v.site: config.sites[v.site] for v in visits if v.site in config.sites},
        "months": monthly(visits, first, max(first, end if end is not None else now_month),
                          enrolled.start if enrolled is not None else ""),
        "outcome": client_outcome(src, person) if enrolled is not None else None,
        **medications(store, ids, names),
        "alerts": alerts,
        # the audit trail reads ``subject`` (see people.refs): the AuditEvent names this person
        "subject": {"reference": f"Patient/{person}"},
    }

"""``$defi-sante-enroll`` and ``$defi-sante-disenroll``: Parameters in, program resources out.

Enroll writes, in one store transaction (then publishes, see ``publish.py``):

- **Flag** (profile defi-sante-flag): code ``defi-sante``, status active, period.start — what every
  site sees on the record, and what the ER alerts look for;
- **Goal** per goal of the service plan (lifecycleStatus active), referenced by the CarePlan;
- **CarePlan**: category ``defi-sante``, intent plan, the goals, one activity per activity;
- **CareTeam**: case manager, family doctor (default: the Patient's generalPractitioner
  Practitioner, from PD1-4), pharmacist, other members with their roles (our CodeSystem);
- **Consent** (scope patient-privacy, category LOINC 59284-0 + ``family-involvement``): base
  provision ``deny`` (disclosure to the family), one nested ``permit`` per RelatedPerson the
  client agreed may be told; policyRule OPTIN / OPTOUT.

Ids are deterministic per patient (codes.py), and a repeated enroll keeps the first start
date, so repeating a POST changes nothing. Goals dropped by a later enroll are cancelled.
Disenroll closes everything: Flag inactive, CarePlan completed, CareTeam and Consent inactive,
Goals completed, every period ended; repeating it keeps the first end.

Parameters (all optional but caseManager; a reference may be ``valueReference`` or, for a person
known by licence only, ``valueIdentifier``)::

    caseManager, familyDoctor, pharmacist     Practitioner / PractitionerRole / Organization
    member (part role = valueCode of our CodeSystem, part member = reference), repeating
    goal, activity (valueString), repeating
    familyInvolvement (valueBoolean), relatedPerson (valueReference RelatedPerson/…), repeating
    start / end (valueDateTime or valueDate; default now)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.defisante import codes
from gateway.defisante.codes import JSON, ref_id
from gateway.defisante.roster import Enrollment, read
from gateway.errors import StoreError
from gateway.fhirstore import FhirStore
from gateway.fhirstore.dates import date_range

_REF_TYPES = ("Practitioner", "PractitionerRole", "Organization", "RelatedPerson", "CareTeam", "Patient")
_TITLE = "Plan de services individualisé — Défi Santé"


def bad(message: str) -> StoreError:
    """A 400 OperationOutcome (messages name parameters, never their values)."""
    return StoreError(message, status=400, issue_code="invalid")


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(slots=True)
class EnrollRequest:
    """What a $defi-sante-enroll Parameters says, checked."""

    case_manager: JSON
    family_doctor: JSON | None = None
    pharmacist: JSON | None = None
    members: list[tuple[str, JSON]] = field(default_factory=list)
    goals: list[str] = field(default_factory=list)
    activities: list[str] = field(default_factory=list)
    family_involvement: bool = False
    relatives: list[JSON] = field(default_factory=list)
    start: str | None = None


def _reference(param: JSON, name: str) -> JSON:
    if isinstance(param.get("valueReference"), dict):
        ref = dict(param["valueReference"])
        target = str(ref.get("reference") or "")
        kind = target.split("/", 1)[0]
        if kind not in _REF_TYPES or ref_id(ref) is None:
            raise bad(f"parameter {name}: valueReference must be one of {', '.join(_REF_TYPES)}/<id>")
        return {k: v for k, v in ref.items() if k in ("reference", "display")}
    ident = param.get("valueIdentifier")
    if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(ident.get("value"), str):
        return {"type": "Practitioner", "identifier": {"system": ident["system"], "value": ident["value"]}}
    raise bad(f"parameter {name}: needs valueReference or valueIdentifier (system and value)")


def _when(param: JSON, name: str) -> str:
    text = param.get("valueDateTime") or param.get("valueDate")
    if not isinstance(text, str):
        raise bad(f"parameter {name}: needs valueDateTime or valueDate")
    try:
        date_range(text)
    except ValueError:
        raise bad(f"parameter {name}: not a FHIR date or dateTime") from None
    return text


def _text(param: JSON, name: str) -> str:
    text = param.get("valueString")
    if not isinstance(text, str) or not text.strip():
        raise bad(f"parameter {name}: needs a non-empty valueString")
    return text.strip()


def _params(body: Any) -> list[JSON]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad("the body must be a Parameters resource")
    items = body.get("parameter") or []
    if not isinstance(items, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in items):
        raise bad("Parameters.parameter must be a list of named parameters")
    return items


def parse_enroll(body: Any) -> EnrollRequest:
    """Check a $defi-sante-enroll Parameters resource (StoreError 400 naming the parameter)."""
    req = EnrollRequest(case_manager={})
    for p in _params(body):
        name = p["name"]
        if name in ("caseManager", "familyDoctor", "pharmacist"):
            ref = _reference(p, name)
            attr = {"caseManager": "case_manager", "familyDoctor": "family_doctor", "pharmacist": "pharmacist"}[name]
            setattr(req, attr, ref)
        elif name == "member":
            parts = {q.get("name"): q for q in p.get("part") or [] if isinstance(q, dict)}
            role = (parts.get("role") or {}).get("valueCode")
            if role not in codes.MEMBER_ROLES:
                raise bad(f"parameter member: part role must be one of {', '.join(sorted(codes.MEMBER_ROLES))}")
            req.members.append((str(role), _reference(parts.get("member") or {}, "member.member")))
        elif name in ("goal", "activity"):
            (req.goals if name == "goal" else req.activities).append(_text(p, name))
        elif name == "familyInvolvement":
            if not isinstance(p.get("valueBoolean"), bool):
                raise bad("parameter familyInvolvement: needs valueBoolean")
            req.family_involvement = p["valueBoolean"]
        elif name == "relatedPerson":
            ref = _reference(p, name)
            if ref_id(ref, "RelatedPerson") is None:
                raise bad("parameter relatedPerson: needs valueReference RelatedPerson/<id>")
            req.relatives.append(ref)
        elif name == "start":
            req.start = _when(p, name)
        else:
            raise bad(f"unknown parameter {name}")
    if not req.case_manager:
        raise bad("parameter caseManager is required")
    if req.family_involvement and not req.relatives:
        raise bad("familyInvolvement=true needs at least one relatedPerson (who may be told)")
    if not req.family_involvement and req.relatives:
        raise bad("relatedPerson given with familyInvolvement=false")
    if len(set(req.goals)) != len(req.goals):
        raise bad("parameter goal: the same goal is given twice")
    return req


def default_family_doctor(patient: JSON) -> JSON | None:
    """The first Practitioner of Patient.generalPractitioner (PD1-4), if any."""
    for ref in patient.get("generalPractitioner") or []:
        if ref_id(ref, "Practitioner"):
            return {"reference": ref["reference"]}
    return None


def _participant(role: str, member: JSON, start: str) -> JSON:
    return {"role": [codes.concept(role, codes.ROLE_DISPLAY[role])], "member": member, "period": {"start": start}}


def enroll_resources(patient: JSON, req: EnrollRequest, current: Enrollment | None,
                     current_goals: list[JSON]) -> list[JSON]:
    """The Flag, Goals, CarePlan, CareTeam and Consent of one enrollment (module docstring);
    ``current_goals``: the Goals of the current CarePlan (those no longer wanted are cancelled)."""
    pid = str(patient["id"])
    subject = {"reference": f"Patient/{pid}"}
    keep_start = current is not None and current.active and current.start
    start = req.start or (current.start if keep_start and current is not None else now_text())
    doctor = req.family_doctor or default_family_doctor(patient)
    team = [_participant("case-manager", req.case_manager, start)]
    if doctor is not None:
        team.append(_participant("family-doctor", doctor, start))
    if req.pharmacist is not None:
        team.append(_participant("pharmacist", req.pharmacist, start))
    team += [_participant(role, member, start) for role, member in req.members]
    flag = {"resourceType": "Flag", "id": codes.flag_id(pid), "meta": {"profile": [codes.FLAG_PROFILE]},
            "status": "active",
            "category": [codes.concept("admin", "Administrative", "http://terminology.hl7.org/CodeSystem/flag-category")],
            "code": codes.program_concept(), "subject": subject, "period": {"start": start},
            "author": req.case_manager}
    goals = [{"resourceType": "Goal", "id": codes.goal_id(pid, text), "lifecycleStatus": "active",
              "category": [codes.program_concept()], "description": {"text": text}, "subject": subject,
              "startDate": start[:10]} for text in req.goals]
    wanted = {g["id"] for g in goals}
    dropped = [dict(g, lifecycleStatus="cancelled") for g in current_goals if g["id"] not in wanted]
    careteam = {"resourceType": "CareTeam", "id": codes.careteam_id(pid), "status": "active",
                "category": [codes.program_concept()], "name": "Équipe Défi Santé", "subject": subject,
                "period": {"start": start}, "participant": team}
    careplan: JSON = {"resourceType": "CarePlan", "id": codes.careplan_id(pid), "status": "active", "intent": "plan",
                      "category": [codes.program_concept()], "title": _TITLE, "subject": subject,
                      "period": {"start": start}, "author": req.case_manager,
                      "careTeam": [{"reference": f"CareTeam/{careteam['id']}"}]}
    if goals:
        careplan["goal"] = [{"reference": f"Goal/{g['id']}"} for g in goals]
    if req.activities:
        careplan["activity"] = [{"detail": {"status": "not-started", "description": text}}
                                for text in req.activities]
    return [flag, *goals, *dropped, careplan, careteam, _consent(pid, subject, req, start)]


def _consent(pid: str, subject: JSON, req: EnrollRequest, start: str) -> JSON:
    disclose = [codes.concept("disclose", "Disclose", codes.CONSENT_ACTION)]
    provision: JSON = {"type": "deny", "period": {"start": start}, "action": disclose}
    if req.family_involvement:
        provision["provision"] = [
            {"type": "permit", "action": disclose,
             "actor": [{"role": codes.concept("IRCP", "information recipient", codes.PARTICIPATION),
                        "reference": relative}]}
            for relative in req.relatives]
    rule = "OPTIN" if req.family_involvement else "OPTOUT"
    return {"resourceType": "Consent", "id": codes.consent_id(pid), "status": "active",
            "scope": codes.concept("patient-privacy", "Privacy Consent", codes.CONSENT_SCOPE),
            "category": [codes.concept("59284-0", "Patient Consent", codes.LOINC),
                         codes.concept("family-involvement", "Participation de la famille")],
            "patient": subject, "dateTime": start, "performer": [subject],
            "policyRule": codes.concept(rule, "", codes.ACT_CODE), "provision": provision}


def disenroll_resources(current: Enrollment, goals: list[JSON], end: str | None) -> list[JSON]:
    """The enrollment's resources, closed (module docstring); unchanged when already closed."""
    stop = current.end or end or now_text()
    out: list[JSON] = []
    flag = dict(current.flag, status="inactive", period={**(current.flag.get("period") or {}), "end": stop})
    out.append(flag)
    for goal in goals:
        if goal.get("lifecycleStatus") not in ("cancelled", "completed", "entered-in-error", "rejected"):
            goal = dict(goal, lifecycleStatus="completed")
        out.append(goal)
    if current.careplan is not None:
        plan = current.careplan
        out.append(dict(plan, status="completed" if plan.get("status") == "active" else plan.get("status"),
                        period={**(plan.get("period") or {}), "end": stop}))
    if current.careteam is not None:
        team = current.careteam
        parts = [dict(p, period={**(p.get("period") or {}), "end": (p.get("period") or {}).get("end") or stop})
                 for p in team.get("participant") or []]
        out.append(dict(team, status="inactive", period={**(team.get("period") or {}), "end": stop},
                        participant=parts))
    if current.consent is not None:
        consent = current.consent
        provision = dict(consent.get("provision") or {})
        provision["period"] = {**(provision.get("period") or {}), "end": stop}
        out.append(dict(consent, status="inactive", provision=provision))
    return [_strip_meta(r) for r in out]


def _strip_meta(resource: JSON) -> JSON:
    """Drop the store's versionId/lastUpdated (a rewrite of equal content stays one version)."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in resource.items() if k != "meta"}
    return {"resourceType": out.pop("resourceType"), "id": out.pop("id"), **({"meta": meta} if meta else {}), **out}


def goals_of(store: FhirStore, current: Enrollment | None) -> list[JSON]:
    """The Goals the current CarePlan references (read from the store)."""
    if current is None or current.careplan is None:
        return []
    out = []
    for ref in current.careplan.get("goal") or []:
        gid = ref_id(ref, "Goal")
        goal = read(store, "Goal", gid) if gid else None
        if goal is not None:
            out.append(_strip_meta(goal))
    return out

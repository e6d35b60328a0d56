"""AuditEvents of what the gateway discloses on its own: alerts raised, subscription notifications.

No HTTP request is behind these (audit.py covers those): the gateway itself decides to tell
someone about a patient. Same BALP shape (who, what, when, outcome), with

- ``type`` DCM 110106 *Export* (data about a patient leaves the gateway for a recipient), and
  ``subtype`` ``alert`` or ``notification`` (:data:`SUBTYPE_SYSTEM`), ``action`` C for an alert (a
  Communication is created) and R for a notification (stored resources are sent);
- ``agent[0]``: Pivot, the requestor (DCM 110153 Source Role ID, client ``pivot`` in
  ``pivot audit``); then one agent per recipient (DCM 110152 Destination Role ID): each
  ``Communication.recipient``, or the subscriber's Organization (the ``subscription-owner``),
  else the Subscription;
- ``entity``: the Patients (role 1), the Communication or the Subscription (role 4), for a
  notification the focus of each event (``Type/id/_history/n``, role 4), and ``detail``s (alert
  kind; notification type, event numbers, content mode);
- ``outcome`` 0 when the alert was raised / the endpoint accepted the notification, 4 when the
  endpoint did not (``outcomeDesc``: ``HTTP 503``, ``ConnectError``, ``endpoint refused: …``).

No BALP profile is claimed: BALP profiles RESTful interactions only. References and codes only:
no text, no endpoint, no header, no resource content.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.envelope import now_iso
from gateway.security.audit import DCM, ENTITY_TYPE, OBJECT_ROLE

SUBTYPE_SYSTEM = "https://pivot.example.org/fhir/CodeSystem/audit-event-subtype"
SYSTEM_AGENT = "pivot"
SYSTEM_AGENT_SYSTEM = "urn:pivot:system"  # not a client id: the gateway acting on its own
EXPORT = "110106"
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[0-9]{1,12})?")
_ACTION = {"alert": "C", "notification": "R", "careteam-change": "U"}  # careteam-change: audit_careteam.py
_DONE = {"alert": "raised", "careteam-change": "changed"}
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class DisclosureRecord:
    """Something the gateway sent about patients on its own (references and codes only)."""

    subtype: str  # alert | notification
    patients: tuple[str, ...]  # Patient/x
    resources: tuple[str, ...]  # Communication/x; or Subscription/x then each focus Type/id/_history/n
    recipients: tuple[str, ...]  # references (Practitioner/x, Organization/x) or a short label
    details: tuple[tuple[str, str], ...] = ()  # (name, value): kind, event numbers, content mode
    error: str = ""  # empty: raised / accepted; else why not (no content, no endpoint)
    recorded: str = ""  # ISO instant; empty = now


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _who(text: str) -> JSON:
    return {"reference": text} if _REFERENCE.fullmatch(text) else {"display": text}


def _recipient(text: str) -> JSON:
    return {"type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]}, "who": _who(text),
            "requestor": False}


def build_disclosure_event(rec: DisclosureRecord) -> tuple[JSON, list[str]]:
    """The AuditEvent of one disclosure and the Patient references it names."""
    patients = [p for p in dict.fromkeys(rec.patients) if p.startswith("Patient/")]
    entities: list[JSON] = [{"what": {"reference": ref}, "type": _coding(ENTITY_TYPE, "1", "Person"),
                             "role": _coding(OBJECT_ROLE, "1", "Patient")} for ref in patients]
    entities += [{"what": {"reference": ref}, "type": _coding(ENTITY_TYPE, "2", "System Object"),
                  "role": _coding(OBJECT_ROLE, "4", "Domain Resource")} for ref in dict.fromkeys(rec.resources)]
    if rec.details and len(entities) > len(patients):  # on the Communication / the Subscription
        entities[len(patients)]["detail"] = [
            {"type": name, "valueString": value} for name, value in rec.details]
    event: JSON = {
        "resourceType": "AuditEvent",
        "id": uuid.uuid4().hex,
        "type": _coding(DCM, EXPORT, "Export"),
        "subtype": [_coding(SUBTYPE_SYSTEM, rec.subtype, rec.subtype)],
        "action": _ACTION.get(rec.subtype, "E"),
        "recorded": rec.recorded or now_iso(),
        "outcome": "4" if rec.error else "0",
        "outcomeDesc": rec.error or _DONE.get(rec.subtype, "accepted"),
        "agent": [
            {"type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
             "who": {"identifier": {"system": SYSTEM_AGENT_SYSTEM, "value": SYSTEM_AGENT}, "display": SYSTEM_AGENT},
             "requestor": True},
            *(_recipient(r) for r in dict.fromkeys(rec.recipients)),
        ],
        "source": {"site": "Pivot", "observer": {"display": "Pivot gateway"},
                   "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4",
                                    "Application Server")]},
    }
    if entities:
        event["entity"] = entities
    return event, patients


def alert_disclosure(comm: JSON, kind: str) -> DisclosureRecord:
    """The disclosure of one alert Communication (Défi Santé or pharmacy rules) to its recipients."""
    subject = (comm.get("subject") or {}).get("reference")
    recipients = [str(r.get("reference") or r.get("display") or "") for r in comm.get("recipient") or []
                  if isinstance(r, dict)]
    return DisclosureRecord("alert", (str(subject),) if subject else (), (f"Communication/{comm['id']}",),
                            tuple(r for r in recipients if r), (("kind", kind),))


def notification_disclosure(*, subscription: str, owner: str | None, kind: str, content: str,
                            focus: tuple[str, ...], numbers: tuple[int, ...], patients: tuple[str, ...],
                            error: str = "") -> DisclosureRecord:
    """The disclosure of one notification sent (or attempted) to a subscriber's endpoint."""
    details = [("notification-type", kind), ("content", content)]
    if numbers:
        first, last = min(numbers), max(numbers)
        details.append(("event-numbers", f"{first}-{last}" if last != first else str(first)))
    recipient = f"Organization/{owner}" if owner else f"subscriber of Subscription/{subscription}"
    return DisclosureRecord("notification", patients, (f"Subscription/{subscription}", *focus), (recipient,),
                            tuple(details), error)

"""The dispensing pharmacy and pharmacist join an enrolled client's CareTeam (role pharmacist), once.

The CareTeam is the one of the Défi Santé enrollment (``gateway.defisante.codes.careteam_id``). A
dispense (MedicationDispense) of an enrolled client adds, when not already a current member:

- the pharmacy (the dispense's Organization performer), role ``pharmacist``;
- the pharmacist (its Practitioner performer, RXD-10), role ``pharmacist``, ``onBehalfOf`` the pharmacy.

"Current member" = a participant with the same ``member.reference`` and no ``period.end``, whatever
its role (a pharmacist named at enrollment is not added twice). ``period.start`` is the date of the
first dispense that brought them in, so a resend changes nothing.
"""

from __future__ import annotations

from typing import Any

from gateway.defisante import codes

JSON = dict[str, Any]


def _members(careteam: JSON) -> set[str]:
    out: set[str] = set()
    for part in careteam.get("participant") or []:
        member = (part or {}).get("member") if isinstance(part, dict) else None
        if isinstance(member, dict) and isinstance(member.get("reference"), str) and \
                "end" not in (part.get("period") or {}):
            out.add(member["reference"])
    return out


def _performers(dispense: JSON) -> tuple[str, str]:
    """(Organization reference, Practitioner reference) of a dispense's performers ('' when absent)."""
    org = person = ""
    for perf in dispense.get("performer") or []:
        ref = ((perf or {}).get("actor") or {}).get("reference") if isinstance(perf, dict) else None
        if isinstance(ref, str) and ref.startswith("Organization/"):
            org = ref
        elif isinstance(ref, str) and ref.startswith("Practitioner/"):
            person = ref
    return org, person


def with_pharmacists(careteam: JSON, dispenses: list[JSON]) -> JSON | None:
    """The CareTeam with the dispenses' pharmacies and pharmacists added (module docstring); None
    when nobody new joins (or the CareTeam is not active)."""
    if careteam.get("status") != "active":
        return None
    present = _members(careteam)
    added: list[JSON] = []
    for disp in sorted(dispenses, key=lambda d: (str(d.get("whenHandedOver", "")), str(d.get("id")))):
        org, person = _performers(disp)
        start = str(disp.get("whenHandedOver") or "")
        period = {"start": start} if start else {}
        for ref, on_behalf in ((org, ""), (person, org)):
            if not ref or ref in present:
                continue
            part: JSON = {"role": [codes.concept("pharmacist", "Pharmacien communautaire")],
                          "member": {"reference": ref}}
            if on_behalf:
                part["onBehalfOf"] = {"reference": on_behalf}
            if period:
                part["period"] = dict(period)
            added.append(part)
            present.add(ref)
    if not added:
        return None
    meta = {k: v for k, v in (careteam.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    body = {k: v for k, v in careteam.items() if k not in ("meta", "resourceType", "id")}
    out: JSON = {"resourceType": "CareTeam", "id": careteam["id"]}
    if meta:
        out["meta"] = meta
    out.update(body)
    out["participant"] = [*(careteam.get("participant") or []), *added]
    return out

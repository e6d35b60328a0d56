"""Cancels applied as reversals of what they cancel, onto the Encounter as last published.

HL7 v2.5 chapter 3: a cancel reverses one earlier event; other changes travel in an A08. So when
the resolver knows the Encounter (same id, or the person's latest matching visit at the same site
when the cancel has no visit number), only the reversal is applied to it:

- A11 (cancels an A01/A04/A05 admit or visit): ``status`` cancelled (entered-in-error when the
  visit had already finished), every location ``completed``.
- A13 (cancels an A03 discharge): ``status`` back to the cancel's (in-progress), ``period.end``
  and the discharge disposition removed, the current location active again.
- A12 (cancels an A02 transfer): the location is the one before the transfer, active (the A12's
  PV1-3, else the location the A02 had marked as prior, i.e. its PV1-6); the cancelled
  destination is removed.

Without a known Encounter the cancel's own mapping is used as is (mappings/segments/encounter.py).
"""

from __future__ import annotations

from typing import Any

from gateway.identity.bodies import clone

JSON = dict[str, Any]
CANCELS = frozenset({"A11", "A12", "A13"})
# statuses a cancel may apply to, to find its visit when it carries no visit number
TARGET_STATUSES: dict[str, frozenset[str]] = {
    "A11": frozenset({"planned", "arrived", "triaged", "in-progress", "onleave"}),
    "A12": frozenset({"in-progress", "arrived", "triaged", "onleave"}),
    "A13": frozenset({"finished"}),
}


def reverse(trigger: str, stored: JSON, cancel: JSON) -> JSON:
    """The stored Encounter with the reversal of ``trigger`` applied; ``meta`` from the cancel."""
    out: JSON = clone(stored)
    if "meta" in cancel:
        out["meta"] = clone(cancel["meta"])
    if trigger == "A11":  # a visit that already ended was not cancelled: it was entered in error
        out["status"] = "entered-in-error" if stored.get("status") == "finished" else "cancelled"
        for loc in out.get("location") or []:
            loc["status"] = "completed"
    elif trigger == "A13":
        _cancel_discharge(out, cancel)
    elif trigger == "A12":
        _cancel_transfer(out, cancel)
    return out


def _cancel_discharge(out: JSON, cancel: JSON) -> None:
    out["status"] = cancel.get("status") or "in-progress"
    period = out.get("period") or {}
    period.pop("end", None)
    if period:
        out["period"] = period
    else:
        out.pop("period", None)
    hosp = out.get("hospitalization") or {}
    hosp.pop("dischargeDisposition", None)
    if hosp:
        out["hospitalization"] = hosp
    else:
        out.pop("hospitalization", None)
    if cancel.get("location"):
        out["location"] = clone(cancel["location"])
    elif out.get("location"):
        out["location"][0]["status"] = "active"


def _cancel_transfer(out: JSON, cancel: JSON) -> None:
    restored: JSON | None = None
    if cancel.get("location"):
        restored = clone(cancel["location"][0])
    else:
        prior = [loc for loc in out.get("location") or [] if loc.get("status") == "completed"]
        restored = clone(prior[-1]) if prior else None
    if restored is not None:
        restored["status"] = "active"
        out["location"] = [restored]


def matches_cancel(trigger: str, encounter: JSON, cancel: JSON) -> bool:
    """Could ``encounter`` be the visit a cancel without visit number names? Same service provider
    (the sending site), no visit number, and a status the cancel applies to."""
    return ("identifier" not in encounter and encounter.get("serviceProvider") == cancel.get("serviceProvider")
            and encounter.get("status") in TARGET_STATUSES.get(trigger, frozenset()))

"""The visit's state machine (Encounter.status), applied by the resolver onto the stored Encounter.

    planned ─→ arrived / triaged ─→ in-progress ⇄ onleave ─→ finished
        └──────────── A11 (cancel admit/visit) ──→ cancelled (entered-in-error once finished)
    finished ─→ in-progress only by A13 (cancel discharge: gateway/identity/reversal.py)

- A status only moves forward: an A08 mapped ``in-progress`` (its PV1-45 empty) after the A03
  leaves the visit ``finished``, with its end time and discharge disposition (empty = keep,
  mappings/merge.py); an A08 of an unmapped patient class (``unknown``) changes nothing.
- ``cancelled`` and ``entered-in-error`` are final, except for a new registration of the same
  visit number (A01, A04, A05, A14: the site registered the visit again after cancelling it).
- A visit that is closed (finished, cancelled, entered-in-error) has every location
  ``completed``.
"""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]
_RANK = {"planned": 0, "arrived": 1, "triaged": 2, "in-progress": 3, "onleave": 3, "finished": 4}
FINAL = frozenset({"cancelled", "entered-in-error"})
CLOSED = frozenset({"finished", *FINAL})
_REGISTRATIONS = frozenset({"A01", "A04", "A05", "A14"})
_NO_NEWS = frozenset({"", "unknown"})


def next_status(stored: str, mapped: str, trigger: str) -> str:
    """The status after a message mapped as ``mapped`` reaches a visit stored as ``stored``."""
    if not stored or stored == "unknown":
        return mapped
    if mapped in _NO_NEWS:
        return stored
    if stored in FINAL:
        return mapped if trigger in _REGISTRATIONS else stored
    if mapped in FINAL:
        return mapped
    if stored == "finished":
        return mapped if trigger == "A13" else stored
    return mapped if _RANK.get(mapped, 0) >= _RANK.get(stored, 0) else stored


def transition(encounter: JSON, stored: JSON | None, trigger: str) -> JSON:
    """``encounter`` (as mapped) with the status the state machine allows from ``stored``."""
    if stored is None:
        return encounter
    status = next_status(str(stored.get("status", "")), str(encounter.get("status", "")), trigger)
    return encounter if status == encounter.get("status") else {**encounter, "status": status}


def settle(encounter: JSON) -> JSON:
    """A closed visit's locations all ``completed`` (a copy when something changes)."""
    locations = encounter.get("location") or []
    if encounter.get("status") not in CLOSED or all(loc.get("status") == "completed" for loc in locations):
        return encounter
    return {**encounter, "location": [{**loc, "status": "completed"} for loc in locations]}

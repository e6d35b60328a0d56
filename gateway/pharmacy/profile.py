"""The medication profile of one person, computed from the pharmacies' dispenses and orders.

Pure functions (no store access): :func:`facts` reads FHIR resources into fills and stops,
:func:`evaluate` gives the state of each drug at a moment.

- **A drug** is keyed by its ATC substance code (level 5, 7 characters) when known, else its DIN,
  else its first coding, else its text: two generics of one substance (two DINs, one ATC) are one
  line of the profile, whichever pharmacy dispensed them.
- **A fill** covers ``[start, start + days)``: a MedicationDispense (not cancelled, declined or in
  error) from ``whenHandedOver`` for its ``daysSupply`` (else the policy's default, 30 days); an
  active or completed MedicationRequest from ``authoredOn`` for its ``expectedSupplyDuration``
  (else the default). Its pharmacy is the Organization performer (the order's
  ``dispenseRequest.performer``).
- **A stop** of pharmacy P at time T: a MedicationRequest stopped, cancelled or on hold (T =
  ``dispenseRequest.validityPeriod.end``, else ``authoredOn``), or a *profile message* of P (a
  Provenance carrying ``urn:pivot:extension:pharmacy-profile``) that does not list the drug (T = its
  ``asOf``). A stop truncates P's fills of the drug that started before T; other pharmacies' fills
  are untouched.
- **Episodes**: fills closer than ``grace_days`` are one run. The drug's state is that of its
  latest run at ``now``: *active* before the run's end (and up to ``grace_days`` after it: a late
  refill), *stopped* once a stop ended the run, *completed* otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.fhirstore.dates import start_ms
from gateway.pharmacy.config import ProfilePolicy
from mappings.pharmacy.codemaps import ATC_SYSTEM, DIN_SYSTEM, time_unit
from mappings.pharmacy.segments import PROFILE_URL

JSON = dict[str, Any]
DAY_MS = 86_400_000
_DISPENSED = frozenset({"completed", "in-progress", "unknown", "on-hold"})
_ORDERED = frozenset({"active", "completed"})
_STOPPING = frozenset({"stopped", "cancelled", "on-hold"})


@dataclass(frozen=True, slots=True)
class Fill:
    """One period of supply of a drug by a pharmacy (a dispense, or an order)."""

    ref: str
    drug: str
    atc: str
    concept: JSON
    start: int
    days: float
    pharmacy: str
    start_text: str
    dosage: JSON | None
    dispense: bool

    @property
    def end(self) -> int:
        return self.start + int(self.days * DAY_MS)


@dataclass(frozen=True, slots=True)
class Stop:
    """Pharmacy ``pharmacy`` stopped supplying drug ``drug`` at ``at`` (ms)."""

    ref: str
    drug: str
    pharmacy: str
    at: int
    at_text: str


@dataclass(slots=True)
class DrugState:
    """A drug's line of the profile at a moment (what a MedicationStatement shows)."""

    drug: str
    atc: str
    status: str
    concept: JSON
    start: int
    start_text: str
    end: int
    end_text: str
    pharmacy: str
    dosage: JSON | None
    asserted_text: str
    sources: list[str] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)


ms_of = start_ms  # the start of a FHIR date/dateTime/instant in ms, None when unreadable


def day_ms(text: object) -> int | None:
    """The calendar day of a FHIR date/dateTime as written (its local date), in ms: supplies count in
    days, so a fill handed over at 10:00 on March 1 for 30 days covers March 1 to March 30."""
    return ms_of(text[:10]) if isinstance(text, str) else None


def day_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def drug_key(concept: JSON) -> tuple[str, str]:
    """(profile key, ATC code at any level or '') of a medication CodeableConcept."""
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]
    atc = next((str(c["code"]) for c in codings if c.get("system") == ATC_SYSTEM), "")
    if len(atc) == 7:
        return f"atc|{atc}", atc
    din = next((str(c["code"]) for c in codings if c.get("system") == DIN_SYSTEM), "")
    if din:
        return f"din|{din}", atc
    if codings:
        return f"{codings[0].get('system', '')}|{codings[0]['code']}", atc
    return f"text|{str(concept.get('text', '')).strip().lower()}", atc


def _days(quantity: object, default: float) -> float:
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
        return default
    unit = time_unit(str(quantity.get("code") or quantity.get("unit") or "d"))
    days = float(quantity["value"]) * (unit[1] if unit is not None else 1.0)
    return days if days > 0 else default


def _pharmacy(refs: Iterable[object]) -> str:
    found = ""
    for ref in refs:
        text = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(text, str) and text.startswith("Organization/"):
            found = text
    return found


def _dispense(res: JSON, policy: ProfilePolicy) -> Fill | None:
    when = res.get("whenHandedOver") or res.get("whenPrepared")
    start = day_ms(when)
    concept = res.get("medicationCodeableConcept")
    if res.get("status") not in _DISPENSED or start is None or not isinstance(concept, dict):
        return None
    key, atc = drug_key(concept)
    dosage = (res.get("dosageInstruction") or [None])[0]
    return Fill(f"MedicationDispense/{res['id']}", key, atc, concept, start,
                _days(res.get("daysSupply"), policy.default_days_supply),
                _pharmacy(p.get("actor") for p in res.get("performer") or [] if isinstance(p, dict)),
                str(when), dosage, True)


def _request(res: JSON, policy: ProfilePolicy) -> Fill | Stop | None:
    concept = res.get("medicationCodeableConcept")
    if not isinstance(concept, dict):
        return None
    key, atc = drug_key(concept)
    request = res.get("dispenseRequest") or {}
    pharmacy = _pharmacy([request.get("performer")])
    ref = f"MedicationRequest/{res['id']}"
    status = res.get("status")
    if status in _STOPPING:
        when = (request.get("validityPeriod") or {}).get("end") or res.get("authoredOn")
        at = ms_of(when)
        return Stop(ref, key, pharmacy, at, str(when)) if at is not None else None
    start = day_ms(res.get("authoredOn"))
    if status not in _ORDERED or start is None:
        return None
    dosage = (res.get("dosageInstruction") or [None])[0]
    return Fill(ref, key, atc, concept, start, _days(request.get("expectedSupplyDuration"), policy.default_days_supply),
                pharmacy, str(res["authoredOn"]), dosage, False)


def _snapshot(prov: JSON) -> tuple[str, int, str] | None:
    """(pharmacy reference, asOf ms, asOf text) of a profile Provenance; None for any other one."""
    for ext in prov.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == PROFILE_URL:
            parts = {e.get("url"): e for e in ext.get("extension") or [] if isinstance(e, dict)}
            as_of = (parts.get("asOf") or {}).get("valueDateTime")
            pharmacy = ((parts.get("pharmacy") or {}).get("valueReference") or {}).get("reference")
            at = ms_of(as_of)
            if at is not None and isinstance(pharmacy, str):
                return pharmacy, at, str(as_of)
    return None


def facts(resources: Iterable[JSON], policy: ProfilePolicy) -> tuple[list[Fill], list[Stop]]:
    """Fills and stops of a person's MedicationDispenses, MedicationRequests and Provenances."""
    fills: list[Fill] = []
    stops: list[Stop] = []
    provenances: list[JSON] = []
    for res in resources:
        rtype = res.get("resourceType")
        found: Fill | Stop | None = None
        if rtype == "MedicationDispense":
            found = _dispense(res, policy)
        elif rtype == "MedicationRequest":
            found = _request(res, policy)
        elif rtype == "Provenance":
            provenances.append(res)
        if isinstance(found, Fill):
            fills.append(found)
        elif isinstance(found, Stop):
            stops.append(found)
    by_ref = {f.ref: f.drug for f in fills}
    for prov in provenances:
        snap = _snapshot(prov)
        if snap is None:
            continue
        pharmacy, at, at_text = snap
        listed = {by_ref[t["reference"]] for t in prov.get("target") or []
                  if isinstance(t, dict) and t.get("reference") in by_ref}
        for drug in sorted({f.drug for f in fills if f.pharmacy == pharmacy and f.start <= at} - listed):
            stops.append(Stop(f"Provenance/{prov['id']}", drug, pharmacy, at, at_text))
    return fills, stops


def _truncated(fill: Fill, stops: list[Stop]) -> tuple[int, Stop | None]:
    """The fill's end after the earliest stop of its pharmacy at or after its start."""
    applicable = [s for s in stops if s.pharmacy == fill.pharmacy and s.at >= fill.start and s.at < fill.end]
    if not applicable:
        return fill.end, None
    first = min(applicable, key=lambda s: (s.at, s.ref))
    return first.at, first


def evaluate(fills: list[Fill], stops: list[Stop], now: int, policy: ProfilePolicy) -> dict[str, DrugState]:
    """The state of every drug at ``now`` (module docstring)."""
    grace = int(policy.grace_days * DAY_MS)
    out: dict[str, DrugState] = {}
    by_drug: dict[str, list[Fill]] = {}
    for fill in fills:
        by_drug.setdefault(fill.drug, []).append(fill)
    for drug, items in by_drug.items():
        items.sort(key=lambda f: (f.start, not f.dispense, f.ref))
        drug_stops = [s for s in stops if s.drug == drug]
        runs: list[tuple[int, int, Stop | None, list[Fill]]] = []
        for fill in items:
            end, stop = _truncated(fill, drug_stops)
            if runs and fill.start <= runs[-1][1] + grace:
                start, run_end, run_stop, members = runs[-1]
                if end >= run_end:
                    run_end, run_stop = end, stop
                runs[-1] = (start, run_end, run_stop, [*members, fill])
            else:
                runs.append((fill.start, end, stop, [fill]))
        start, end, stop, members = runs[-1]
        if now < end:
            status = "active"
        elif stop is not None:
            status = "stopped"
        else:
            status = "active" if now < end + grace else "completed"
        latest = max(members, key=lambda f: (f.start, f.dispense, f.ref))
        asserted = stop.at_text if stop is not None and stop.at >= latest.start else latest.start_text
        sources = sorted({f.ref for f in members} | ({stop.ref} if stop is not None else set()))
        out[drug] = DrugState(drug, latest.atc or next((f.atc for f in members if f.atc), ""), status,
                              latest.concept, start, members[0].start_text, end,
                              stop.at_text if stop is not None else day_text(max(end - 1, start)),
                              latest.pharmacy, latest.dosage, asserted, sources, members)
    return out

"""Pharmacy alerts of enrolled clients: which changes of the profile the case manager hears about.

A message changes the profile from *before* (every fact in the store but this message's) to *after*
(with it), both evaluated at the time of reception. An alert fires on a transition:

    kind                      rule (data: mappings/pharmacy/codemaps/*.json)       id parts
    pharmacy-high-risk        a drug of a high-risk ATC class (atc-classes.json)   drug key, episode start
                              becomes active, or starts a new episode
    pharmacy-active-count     the number of active drugs reaches the threshold     the drugs that became
                              (active_count_threshold, default 10) from below      active, episode starts
    pharmacy-multi-pharmacy   dispenses of one ATC class (class_code_length        class, first dispense of
                              characters) by two or more pharmacies within         the run
                              multi_pharmacy_window_days (30), the last one recent

Ids are deterministic (rule + drug + episode), so a resent message (same facts, new MSH-10) finds its
Communication already in the store and raises nothing (rules.py keeps that ledger). The texts say
which drug and which rule, never who the client is; nothing here is logged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from gateway.pharmacy.config import ACTIVE_COUNT, HIGH_RISK, MULTI_PHARMACY, ProfilePolicy
from gateway.pharmacy.profile import DAY_MS, DrugState, Fill, day_text
from gateway.pharmacy.statements import statement_id
from mappings.ids import stable_id

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert to raise: its kind, deterministic id, text, the drug's codings and statement."""

    kind: str
    id: str
    text: str
    codings: list[JSON]
    statement: str


def drug_name(concept: JSON) -> str:
    """How a drug reads in an alert: the concept's text, else a coding's display, else its code."""
    if concept.get("text"):
        return str(concept["text"])
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return next((str(c["display"]) for c in codings if c.get("display")),
                next((str(c["code"]) for c in codings if c.get("code")), "?"))


def _codings(concept: JSON) -> list[JSON]:
    return [{k: v for k, v in c.items() if k in ("system", "code", "display")}
            for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]


def alert_id(patient_id: str, kind: str, *parts: str) -> str:
    return stable_id("Communication", "pharmacy", kind, patient_id, *parts)


def _latest_day(state: DrugState) -> str:
    return day_text(max(f.start for f in state.fills)) if state.fills else day_text(state.start)


def high_risk(pid: str, before: dict[str, DrugState], after: dict[str, DrugState],
              policy: ProfilePolicy) -> list[Alert]:
    out = []
    for key, state in sorted(after.items()):
        cls = policy.high_risk_class(state.atc)
        prev = before.get(key)
        if state.status != "active" or cls is None or \
                (prev is not None and prev.status == "active" and prev.start == state.start):
            continue
        text = policy.text(HIGH_RISK, drug=drug_name(state.concept), **{"class": cls.label},
                           date=_latest_day(state), rule="classe à risque élevé")
        out.append(Alert(HIGH_RISK, alert_id(pid, HIGH_RISK, key, day_text(state.start)), text,
                         _codings(state.concept), statement_id(pid, key)))
    return out


def active_count(pid: str, before: dict[str, DrugState], after: dict[str, DrugState],
                 policy: ProfilePolicy) -> list[Alert]:
    was = {k for k, s in before.items() if s.status == "active"}
    now = {k for k, s in after.items() if s.status == "active"}
    threshold = policy.active_count_threshold
    if not len(was) < threshold <= len(now):
        return []
    new = sorted(now - was)
    if not new:
        return []
    state = after[new[-1]]
    text = policy.text(ACTIVE_COUNT, drug=drug_name(state.concept), count=str(len(now)), threshold=str(threshold),
                       date=_latest_day(state), rule="nombre de médicaments actifs")
    parts = [f"{k}@{day_text(after[k].start)}" for k in new]
    return [Alert(ACTIVE_COUNT, alert_id(pid, ACTIVE_COUNT, *parts), text, _codings(state.concept),
                  statement_id(pid, state.drug))]


def _class_runs(fills: list[Fill], policy: ProfilePolicy) -> dict[tuple[str, int], list[Fill]]:
    """(class, run start) -> the dispenses of runs where two pharmacies dispensed within the window."""
    window = int(policy.multi_pharmacy_window_days * DAY_MS)
    length = policy.class_code_length
    by_class: dict[str, list[Fill]] = {}
    for fill in fills:
        if fill.dispense and fill.pharmacy and len(fill.atc) >= length:
            by_class.setdefault(fill.atc[:length], []).append(fill)
    out: dict[tuple[str, int], list[Fill]] = {}
    for cls, items in by_class.items():
        items.sort(key=lambda f: (f.start, f.ref))
        runs: list[list[Fill]] = [[items[0]]]
        for fill in items[1:]:
            if fill.start - runs[-1][-1].start <= window:
                runs[-1].append(fill)
            else:
                runs.append([fill])
        for run in runs:
            if any(a.pharmacy != b.pharmacy for a, b in itertools.pairwise(run)):
                out[(cls, run[0].start)] = run
    return out


def multi_pharmacy(pid: str, before: list[Fill], after: list[Fill], now: int, policy: ProfilePolicy) -> list[Alert]:
    window = int(policy.multi_pharmacy_window_days * DAY_MS)
    old = _class_runs(before, policy)
    out = []
    for (cls, start), run in sorted(_class_runs(after, policy).items()):
        latest = max(run, key=lambda f: (f.start, f.ref))
        if (cls, start) in old or now - latest.start > window:
            continue
        pharmacies = len({f.pharmacy for f in run})
        text = policy.text(MULTI_PHARMACY, drug=drug_name(latest.concept), pharmacies=str(pharmacies),
                           window=f"{policy.multi_pharmacy_window_days:g}", date=day_text(latest.start),
                           rule="même classe, plusieurs pharmacies", **{"class": cls})
        out.append(Alert(MULTI_PHARMACY, alert_id(pid, MULTI_PHARMACY, cls, day_text(start)), text,
                         _codings(latest.concept), statement_id(pid, latest.drug)))
    return out

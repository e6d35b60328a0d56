"""``$defi-sante-candidates``: the people who come to the ER again and again, ranked.

For a reference date (default: the day of the latest visit in the register, as the site wrote it,
else today) and a
window of N months ending that day (default 12), each person's visits are counted, minus the
visits an exclusion rule removes (default: pregnancy-related, O00–O9A). A person with at least
``threshold`` counted visits (default 4) is a candidate; candidates are ranked by counted visits,
then latest visit, and the first ``top`` (default 200) are returned. A person-level rule (age
below N) removes the person. Enrolled clients (an active Défi Santé Flag) are never candidates:
they are listed apart, with the same figures.

The answer is a searchset Bundle of Patients: candidates as ``search.mode = match`` (``score`` =
visits / most visits), then enrolled clients as ``search.mode = include``. Every entry carries
the extension ``defi-sante-candidate`` (StructureDefinition in schemas/defisante/): status,
rank, visitCount, excludedVisitCount, lastVisit, site (each), mainDiagnosis (up to three
Codings), includedBy (the rule that listed it) and exclusion (each rule applied, with its count).
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from gateway.defisante.codes import CANDIDATE_EXT, JSON
from gateway.defisante.config import ExclusionRule
from gateway.defisante.register import Code, Register, Visit
from gateway.fhirstore.dates import instant_text

DEFAULT_WINDOW_MONTHS = 12
DEFAULT_THRESHOLD = 4
DEFAULT_TOP = 200


def months_before(day: date, months: int) -> date:
    """``day`` minus ``months`` calendar months (the 31st becomes the month's last day)."""
    year, month = divmod(day.year * 12 + (day.month - 1) - months, 12)
    month += 1
    for d in (day.day, 30, 29, 28):
        try:
            return date(year, month, d)
        except ValueError:
            continue
    raise ValueError("unreachable")


@dataclass(frozen=True, slots=True)
class Query:
    window_months: int = DEFAULT_WINDOW_MONTHS
    threshold: int = DEFAULT_THRESHOLD
    top: int = DEFAULT_TOP
    reference: date | None = None


@dataclass(slots=True)
class Row:
    """One person's figures in the window."""

    person_id: str
    status: str  # candidate | enrolled | former (enrolled once, ended)
    counted: list[Visit] = field(default_factory=list)
    excluded: Counter[str] = field(default_factory=Counter)
    person_rule: str = ""
    rank: int = 0
    included_by: str = ""

    @property
    def last_visit(self) -> str:
        return self.counted[-1].arrival if self.counted else ""

    @property
    def sites(self) -> list[str]:
        return sorted({v.site for v in self.counted if v.site})

    def main_diagnoses(self, n: int = 3) -> list[Code]:
        counts: Counter[tuple[str, str]] = Counter()
        names: dict[tuple[str, str], Code] = {}
        for visit in self.counted:
            for code in visit.diagnoses or visit.reasons:
                counts[(code.system, code.code)] += 1
                names.setdefault((code.system, code.code), code)
        return [names[key] for key, _n in counts.most_common(n)]


@dataclass(slots=True)
class Result:
    reference: date
    window_start: date
    candidates: list[Row]
    enrolled: list[Row]
    total: int


def _age(birth: str, on: date) -> int | None:
    try:
        born = date.fromisoformat(birth[:10]) if len(birth) >= 10 else None
    except ValueError:
        return None
    if born is None:
        return None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def find(register: Register, rules: tuple[ExclusionRule, ...], query: Query,
         enrolled: dict[str, bool]) -> Result:
    """Rank the persons of ``register`` (module docstring); ``enrolled``: person id → still active."""
    latest = max((v.arrival[:10] for v in register.visits if len(v.arrival) >= 10), default="")
    reference = query.reference or (date.fromisoformat(latest) if latest else datetime.now(UTC).date())
    start = months_before(reference, query.window_months)
    lo, hi = (start + timedelta(days=1)).isoformat(), reference.isoformat()
    visit_rules = [r for r in rules if r.kind == "visit-diagnosis"]
    age_rules = [r for r in rules if r.kind == "person-age-below"]
    rows: dict[str, Row] = {}
    for person_id, visits in register.visits_by_person().items():
        status = ("enrolled" if enrolled[person_id] else "former") if person_id in enrolled else "candidate"
        row = Row(person_id, status)
        person = register.persons.get(person_id)
        age = _age(person.birth_date, reference) if person is not None else None
        row.person_rule = next((r.id for r in age_rules if age is not None and age < r.years), "")
        for visit in visits:
            if not lo <= visit.arrival[:10] <= hi:
                continue
            rule = next((r for r in visit_rules if r.excludes_visit(visit.codes())), None)
            if rule is not None:
                row.excluded[rule.id] += 1
            else:
                row.counted.append(visit)
        rows[person_id] = row
    for person_id, active in enrolled.items():
        rows.setdefault(person_id, Row(person_id, "enrolled" if active else "former"))
    why = f"er-visits >= {query.threshold} in the {query.window_months} months ending {hi}"
    listed = [r for r in rows.values() if r.status != "enrolled" and not r.person_rule
              and len(r.counted) >= query.threshold]
    listed.sort(key=lambda r: (-len(r.counted), -_epoch(r.last_visit), r.person_id))
    for n, row in enumerate(listed, start=1):
        row.rank, row.included_by = n, why
    apart = sorted((r for r in rows.values() if r.status == "enrolled"), key=lambda r: (-len(r.counted), r.person_id))
    for row in apart:
        row.included_by = "enrolled in Défi Santé (active Flag)"
    return Result(reference, start, listed[: query.top], apart, len(listed))


def _epoch(text: str) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def extension(row: Row) -> JSON:
    """The defi-sante-candidate extension of one entry."""
    ext: list[JSON] = [{"url": "status", "valueCode": row.status}]
    if row.rank:
        ext.append({"url": "rank", "valueInteger": row.rank})
    ext += [{"url": "visitCount", "valueInteger": len(row.counted)},
            {"url": "excludedVisitCount", "valueInteger": sum(row.excluded.values())}]
    if row.last_visit:
        ext.append({"url": "lastVisit", "valueDateTime": row.last_visit})
    ext += [{"url": "site", "valueString": site} for site in row.sites]
    ext += [{"url": "mainDiagnosis", "valueCoding": code.coding()} for code in row.main_diagnoses()]
    if row.included_by:
        ext.append({"url": "includedBy", "valueString": row.included_by})
    ext += [{"url": "exclusion", "valueString": f"{rule}: {n} visit(s) not counted"}
            for rule, n in sorted(row.excluded.items())]
    return {"url": CANDIDATE_EXT, "extension": ext}


def bundle(result: Result, patients: dict[str, JSON], base: str, self_url: str) -> JSON:
    """The searchset Bundle (module docstring); ``patients``: person id → Patient resource."""
    best = max((len(r.counted) for r in result.candidates), default=0) or 1
    entries: list[JSON] = []
    for rows, mode in ((result.candidates, "match"), (result.enrolled, "include")):
        for row in rows:
            patient = patients.get(row.person_id)
            if patient is None:
                continue
            search: JSON = {"mode": mode}
            if mode == "match":
                search["score"] = round(len(row.counted) / best, 4)
            entries.append({"extension": [extension(row)], "fullUrl": f"{base}/Patient/{row.person_id}",
                            "resource": patient, "search": search})
    out: JSON = {"resourceType": "Bundle", "id": uuid.uuid4().hex,
                 "meta": {"lastUpdated": instant_text(int(time.time() * 1000))}, "type": "searchset",
                 "total": result.total, "link": [{"relation": "self", "url": self_url}]}
    if entries:
        out["entry"] = entries
    return out


CSV_COLUMNS = ("rank", "status", "patient_id", "nam", "family", "given", "birth_date", "visits", "excluded_visits",
               "last_visit", "sites", "main_diagnoses", "included_by", "exclusions")


def csv_text(result: Result, patients: dict[str, JSON], nams: dict[str, str]) -> str:
    """Candidates then enrolled clients as CSV (one header line, ``;`` inside multi-valued cells)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in [*result.candidates, *result.enrolled]:
        patient = patients.get(row.person_id) or {}
        name: JSON = next(iter(patient.get("name") or []), {})
        writer.writerow([row.rank or "", row.status, row.person_id, nams.get(row.person_id, ""),
                         name.get("family", ""), " ".join(name.get("given") or []), patient.get("birthDate", ""),
                         len(row.counted), sum(row.excluded.values()), row.last_visit, ";".join(row.sites),
                         ";".join(f"{c.code} {c.display}".strip() for c in row.main_diagnoses()), row.included_by,
                         ";".join(f"{k}={v}" for k, v in sorted(row.excluded.items()))])
    return buf.getvalue()

"""The candidates page: ``$defi-sante-candidates`` (same ranking, same rules) with the reasons spelt out."""

from __future__ import annotations

from collections import Counter

from gateway.console.common import ConsoleSource, code_json
from gateway.console.config import ConsoleConfig
from gateway.console.people import patient_summary, refs
from gateway.defisante import candidates as cand
from gateway.defisante.codes import JSON


def query(window: int | None, threshold: int | None, top: int | None) -> cand.Query:
    return cand.Query(window or cand.DEFAULT_WINDOW_MONTHS, threshold or cand.DEFAULT_THRESHOLD,
                      top or cand.DEFAULT_TOP)


def _row(row: cand.Row, patient: JSON | None, config: ConsoleConfig) -> JSON:
    sites = Counter(v.site for v in row.counted if v.site)
    last = row.counted[-1] if row.counted else None
    return {
        **patient_summary(patient, row.person_id),
        "rank": row.rank, "status": row.status,
        "visits": len(row.counted), "excludedVisits": sum(row.excluded.values()),
        "lastVisit": row.last_visit, "lastSite": last.site if last else "",
        "sites": [{"site": s, "label": config.sites.get(s, ""), "visits": n} for s, n in sites.most_common()],
        "mainDiagnoses": [code_json(c) for c in row.main_diagnoses()],
        "includedBy": row.included_by,
        "exclusions": [{"rule": rule, "visits": n} for rule, n in sorted(row.excluded.items())],
    }


def candidates(src: ConsoleSource, config: ConsoleConfig, q: cand.Query) -> JSON:
    """Ranked candidates, the window, and the exclusion rules applied."""
    service = src.defisante
    found = service.candidates(q)
    result = found.result
    rows = [_row(r, found.patients.get(r.person_id), config) for r in result.candidates]
    rules = [{"id": r.id, "kind": r.kind, "description": r.description} for r in service.config.enabled(None)]
    return {"reference": result.reference.isoformat(), "windowStart": result.window_start.isoformat(),
            "windowMonths": q.window_months, "threshold": q.threshold, "top": q.top, "total": result.total,
            "rules": rules, "candidates": rows, "patient": refs([r["id"] for r in rows])}

"""The roster page: every client ever enrolled, with the flag, the last ER visit and open alerts."""

from __future__ import annotations

from collections import defaultdict

from gateway.console.alerts import Alert, alert_json, is_open, recent_alerts, visits_by_encounter
from gateway.console.common import ConsoleSource, iso, visit_json
from gateway.console.config import ConsoleConfig
from gateway.console.people import Names, refs, sort_key
from gateway.defisante.codes import JSON
from gateway.defisante.roster import cohort

_YEAR_MS = 365 * 86_400_000
MAX_ALERTS = 1000


def roster(src: ConsoleSource, config: ConsoleConfig, now: int) -> JSON:
    """Active clients first (by name), then those whose follow-up ended."""
    register = src.defisante.register()
    by_person = register.visits_by_person()
    visits = visits_by_encounter(register)
    alerts: dict[str, list[Alert]] = defaultdict(list)
    for alert in recent_alerts(src.store, limit=MAX_ALERTS):
        alerts[register.person(alert.patient_id)].append(alert)
    names = Names(src.store, config.names)
    rows: list[JSON] = []
    for client in cohort(src.store):
        person = register.person(client.patient_id)
        mine = by_person.get(person, [])
        theirs = alerts.get(person, [])
        open_alerts = [a for a in theirs if is_open(a, visits, now)]
        team = client.members("case-manager")
        patient = names.patient(client.patient_id)
        latest = theirs[0] if theirs else None
        rows.append({
            **patient,
            "status": "active" if client.active else "ended",
            "enrolled": client.start, "ended": client.end,
            "caseManager": names.display(team[0]) if team else "",
            "lastVisit": visit_json(mine[-1] if mine else None, config, now),
            "visitsLast12Months": sum(1 for v in mine if v.arrival_ms is not None and now - v.arrival_ms <= _YEAR_MS),
            "openAlerts": len(open_alerts),
            "latestAlert": alert_json(latest, open_=latest in open_alerts, patient=patient,
                                      site_label=config.sites.get(latest.site, ""), visits=visits) if latest else None,
        })
    rows.sort(key=lambda r: (r["status"] != "active", sort_key(r["name"]), r["id"]))
    return {"asOf": iso(now), "clients": rows, "patient": refs([r["id"] for r in rows])}

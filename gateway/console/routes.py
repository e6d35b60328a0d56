"""The console's HTTP surface (thin: the views are in the modules named below).

    GET /console, /console/                       the page (one HTML shell; views by #/… route)
    GET /console/static/{file}                    its scripts, styles, dictionaries (fr.json, en.json)
    GET /console/api/roster                       roster.py      enrolled clients, last ER visit, open alerts
    GET /console/api/candidates?window&threshold&top   candidates.py
    GET /console/api/clients/{id}                 client.py      one client's page
    GET /console/api/clients/{id}/enroll-form     enroll.py      what the enroll form offers
    GET /console/api/outcomes                     outcomes.py    before/after, per client and cohort
    GET /console/api/alerts?limit=                alerts.py      the latest alerts
    GET /console/api/alerts/{id}                  alerts.py      one alert
    GET /console/api/alerts/stream                stream.py      server-sent events (ids only)
    GET /console/api/feeds                        feeds.py       feed health (no patient data)

Enrolling posts ``$defi-sante-enroll`` to ``/fhir`` (the FHIR operation itself). API answers are
JSON (``Cache-Control: no-store``); errors are OperationOutcomes carrying no data; each answer names
the Patients it shows in a top-level ``patient`` list or ``subject`` (what the audit trail reads).
Every answer is the gateway as the caller may see it (scope.py): an organisation's client sees the
clients of its own care teams only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from gateway.console import alerts as alert_views
from gateway.console import candidates as candidate_views
from gateway.console.assets import FILES, SECURITY_HEADERS, Assets
from gateway.console.client import client, person_of
from gateway.console.common import ConsoleSource, now_ms
from gateway.console.config import ConsoleConfig, load_config
from gateway.console.enroll import enroll_form
from gateway.console.feeds import FeedCache, feed_health
from gateway.console.logtail import LastSeen
from gateway.console.outcomes import outcomes
from gateway.console.people import Names, refs
from gateway.console.roster import roster
from gateway.console.scope import ScopedSource, require_client, scoped, seen_rows
from gateway.console.stream import alert_events, cursor_of
from gateway.errors import StoreError
from gateway.http.fhir_io import FhirRoute
from gateway.security.boundary import boundary_of

_NO_STORE = {**SECURITY_HEADERS, "Cache-Control": "no-store"}


def _json(body: dict[str, Any]) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, media_type="application/json; charset=utf-8", headers=_NO_STORE)


def make_console_router(get_gateway: Callable[[], ConsoleSource], *, config: ConsoleConfig | None = None,
                        config_file: Path | None = None, base_path: str = "/console", fhir_base: str = "/fhir",
                        stream_max_s: float = 15.0, stream_poll_s: float = 1.0, feeds_ttl_s: float = 5.0) -> APIRouter:
    """The console router; include it in the app as is (its paths start with ``base_path``)."""
    cfg = config or load_config(config_file)
    assets = Assets(base_path, fhir_base)
    base = base_path.rstrip("/")
    api = f"{base}/api"
    router = APIRouter(route_class=FhirRoute)
    seen = LastSeen()
    feeds = FeedCache(lambda: feed_health(get_gateway().log, get_gateway().settings, cfg, now_ms(), seen),
                      feeds_ttl_s)

    @router.get(base, include_in_schema=False)
    def page_redirect() -> Response:
        return RedirectResponse(f"{base}/", status_code=308)

    @router.get(f"{base}/", include_in_schema=False)
    def page(request: Request) -> Response:
        return assets.response(assets.index, request)

    @router.get(f"{base}/static/{{name}}", include_in_schema=False)
    def static(name: str, request: Request) -> Response:
        if name not in FILES:
            raise StoreError("no such file", status=404, issue_code="not-found")
        return assets.response(assets.files[name], request)

    def as_seen(request: Request) -> ScopedSource:
        """The gateway as the caller may see it (scope.py: gateway/security/boundary.py's rule 3)."""
        src = get_gateway()
        return scoped(src, boundary_of(request, src.store))

    @router.get(f"{api}/roster")
    def roster_view(request: Request) -> Response:
        src = as_seen(request)
        return _json(seen_rows(src.boundary, roster(src, cfg, now_ms()), "clients"))

    @router.get(f"{api}/candidates")
    def candidates_view(request: Request) -> Response:
        q = candidate_views.query(_int(request, "window", 1, 120), _int(request, "threshold", 1, 1000),
                                  _int(request, "top", 1, 10_000))
        return _json(candidate_views.candidates(as_seen(request), cfg, q))

    @router.get(f"{api}/clients/{{pid}}")
    def client_view(pid: str, request: Request) -> Response:
        src = as_seen(request)
        require_client(src.boundary, pid)
        body = client(src, cfg, pid, now_ms())
        require_client(src.boundary, str(body["subject"]["reference"]).removeprefix("Patient/"))
        return _json(body)

    @router.get(f"{api}/clients/{{pid}}/enroll-form")
    def enroll_form_view(pid: str, request: Request) -> Response:
        src = as_seen(request)
        require_client(src.boundary, pid)
        body = enroll_form(src, cfg, pid)
        require_client(src.boundary, str(body["subject"]["reference"]).removeprefix("Patient/"))
        return _json(body)

    @router.get(f"{api}/outcomes")
    def outcomes_view(request: Request) -> Response:
        return _json(outcomes(as_seen(request)))

    @router.get(f"{api}/alerts")
    def alerts_view(request: Request) -> Response:
        return _json(_alerts(as_seen(request), cfg, _int(request, "limit", 1, 500) or 50))

    @router.get(f"{api}/alerts/stream")
    def alerts_stream(request: Request, after: str | None = None) -> Response:
        cursor = cursor_of(request.headers.get("last-event-id"), after)
        sees = as_seen(request).boundary.sees_client
        body = alert_events(lambda: get_gateway().store, cursor, poll_s=stream_poll_s, max_s=stream_max_s,
                            visible=sees)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={**_NO_STORE, "X-Accel-Buffering": "no"})

    @router.get(f"{api}/alerts/{{cid}}")
    def alert_view(cid: str, request: Request) -> Response:
        return _json(_alert(as_seen(request), cfg, cid))

    @router.get(f"{api}/feeds")
    def feeds_view() -> Response:
        return _json(feeds.get())

    return router


def _int(request: Request, name: str, lo: int, hi: int) -> int | None:
    """An optional integer query parameter; a 400 naming it (never its value) when out of range."""
    text = request.query_params.get(name, "")
    if not text:
        return None
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise StoreError(f"parameter {name}: an integer between {lo} and {hi}", status=400, issue_code="invalid")
    return int(text)


def _alerts(src: ScopedSource, cfg: ConsoleConfig, limit: int) -> dict[str, Any]:
    register = src.defisante.register()
    visits = alert_views.visits_by_encounter(register)
    names = Names(src.store)
    now = now_ms()
    items = [alert_views.alert_json(a, open_=alert_views.is_open(a, visits, now), patient=names.patient(a.patient_id),
                                    site_label=cfg.sites.get(a.site, ""), visits=visits)
             for a in _visible_alerts(src, limit)]
    return {"alerts": items, "patient": refs([a["patient"]["id"] for a in items])}


_ALERT_WINDOW_MAX = 20_000  # network-wide alerts read at most to find an organisation's ``limit`` latest


def _visible_alerts(src: ScopedSource, limit: int) -> list[alert_views.Alert]:
    """The ``limit`` latest alerts the caller may see: the boundary filters BEFORE the limit (an
    organisation's client gets its own clients' latest alerts, however many newer alerts of other
    clients there are), reading a window four times larger each round."""
    window = limit
    while True:
        found = alert_views.recent_alerts(src.store, limit=window)
        mine = [a for a in found if src.boundary.sees_client(a.patient_id)]
        if len(mine) >= limit or len(found) < window or window >= _ALERT_WINDOW_MAX:
            return mine[:limit]
        window = min(window * 4, _ALERT_WINDOW_MAX)


def _alert(src: ScopedSource, cfg: ConsoleConfig, cid: str) -> dict[str, Any]:
    try:
        comm = src.store.read("Communication", cid).resource
    except StoreError:
        comm = None
    alert = alert_views.alert_of(comm or {})
    if alert is None or not src.boundary.sees_client(alert.patient_id):
        raise StoreError("no alert with this id", status=404, issue_code="not-found")
    person_of(src, alert.patient_id)  # a client or candidate of the program, else 404
    visits = alert_views.visits_by_encounter(src.defisante.register())
    patient = Names(src.store).patient(alert.patient_id)
    body = alert_views.alert_json(alert, open_=alert_views.is_open(alert, visits, now_ms()), patient=patient,
                                  site_label=cfg.sites.get(alert.site, ""), visits=visits)
    return {**body, "subject": {"reference": f"Patient/{alert.patient_id}"}}

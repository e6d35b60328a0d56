"""``GET /fhir/AuditEvent`` and ``GET /fhir/AuditEvent/{id}``: the audit trail for a privacy officer.

    GET /fhir/AuditEvent?patient=Patient/x&date=ge2026-12-01   who saw this client's record this month

Scope ``system/AuditEvent.rs`` (or ``.r`` / ``.s``), granted only by name: ``system/*.rs`` does not
include it (gateway/security/scopes.py), since the trail says who looked at which client. A client
registered with an ``organization`` sees only its own accesses (the events whose requesting agent is
that client); unbound clients (the privacy officer's, hospital IT) see the whole trail. Every call
is itself audited like any other FHIR request (the middleware records a search-type / read of
AuditEvent, naming the Patients of the events returned). The search itself is audit_search.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.errors import StoreError
from gateway.http.fhir_io import fhir_response
from gateway.security.audit_search import parse_query, read_audit, search_audit
from gateway.security.clients import Principal
from gateway.security.middleware import STATE_PRINCIPAL


def own_trail_only(request: Request) -> str | None:
    """The client id whose own accesses are all it may see (an organisation-bound caller), else None."""
    principal = getattr(request.state, STATE_PRINCIPAL, None)
    if isinstance(principal, Principal) and principal.method != "none" and principal.organization:
        return principal.client_id
    return None


def _link(request: Request, params: list[tuple[str, str]]) -> str:
    base = str(request.url.replace(query=""))
    return f"{base}?{urlencode(params)}" if params else base


def make_audit_router(trail_path: Callable[[], Path]) -> APIRouter:
    """The routes, mounted under ``/fhir`` (before the store's generic ``/{type}`` routes)."""
    router = APIRouter()

    @router.get("/AuditEvent")
    async def search(request: Request) -> Response:
        params = list(request.query_params.multi_items())
        query = parse_query(params)
        me = own_trail_only(request)
        if me is not None:
            query.only_agent(me)
        total, events, cursor = await run_in_threadpool(search_audit, trail_path(), query)
        kept = [(k, v) for k, v in params if k != "_page"]
        links = [{"relation": "self", "url": _link(request, params)}]
        if cursor is not None:
            links.append({"relation": "next", "url": _link(request, [*kept, ("_page", f"s{cursor}")])})
        base = str(request.url.replace(query=""))
        return fhir_response({
            "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
            "entry": [{"fullUrl": f"{base}/{e['id']}", "resource": e, "search": {"mode": "match"}} for e in events]})

    @router.get("/AuditEvent/{event_id}")
    async def read(request: Request, event_id: str) -> Response:
        event = await run_in_threadpool(read_audit, trail_path(), event_id, own_trail_only(request))
        if event is None:
            raise StoreError("resource not found", status=404, issue_code="not-found")
        return fhir_response(event)

    return router

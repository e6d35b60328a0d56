"""``$status`` and ``$events`` of the Backport IG, mounted under ``/fhir`` BEFORE the FHIR router.

    GET|POST /Subscription/{id}/$status   searchset Bundle: one SubscriptionStatus (query-status)
    GET|POST /Subscription/{id}/$events   history Bundle (query-event) of the kept events
             eventsSinceNumber, eventsUntilNumber (inclusive; default: from 1 to the last),
             content = empty | id-only | full-resource (default: the subscription's own)

POST takes the same inputs as a ``Parameters`` body (``valueString``/``valueCode``). Errors are
OperationOutcomes (unknown subscription 404, deleted 410, bad number 400). A client registered
with an ``organization`` (not program-wide) sees only its own organisation's subscriptions here —
their events name the owner's patients — and gets 404 for the others, as for a read it may not
make (gateway/http/visibility.py). Thin: the work is in
:class:`~gateway.subscriptions.engine.SubscriptionEngine`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.errors import StoreError
from gateway.http.fhir_io import FhirRoute, fhir_response, read_json
from gateway.security.boundary import boundary_of
from gateway.subscriptions.engine import SubscriptionEngine

_INPUTS = ("eventsSinceNumber", "eventsUntilNumber", "content")


def _number(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise StoreError(f"{name} must be an event number", status=400, issue_code="invalid")
    return int(value)


async def _inputs(request: Request) -> dict[str, str]:
    """Operation inputs from the query string, and from a Parameters body on POST."""
    found = {k: v for k, v in request.query_params.items() if k in _INPUTS}
    if request.method == "POST" and request.headers.get("content-length", "0") != "0":
        body = await read_json(request)
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise StoreError("the body must be a Parameters resource", status=400, issue_code="structure")
        for param in body.get("parameter", []) or []:
            if isinstance(param, dict) and param.get("name") in _INPUTS:
                value = param.get("valueString", param.get("valueCode"))
                if isinstance(value, str):
                    found[str(param["name"])] = value
    return found


def make_subscription_router(get_engine: Callable[[], SubscriptionEngine], *, base_path: str = "/fhir") -> APIRouter:
    """The router of the two operations; include it with ``prefix=base_path``, before the FHIR router."""
    router = APIRouter(route_class=FhirRoute)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + base_path

    async def check_owner(sid: str, request: Request) -> None:
        boundary = boundary_of(request, get_engine().store)  # gateway/security/boundary.py, rule 5
        if boundary.program_wide:
            return
        if not await run_in_threadpool(get_engine().owned_by, sid, boundary.organization):
            raise StoreError(f"Subscription/{sid} not found", status=404, issue_code="not-found")

    @router.get("/Subscription/{sid}/$status")
    @router.post("/Subscription/{sid}/$status")  # two routes, not one api_route: one OpenAPI operation id each
    async def status(sid: str, request: Request) -> Response:
        await _inputs(request)
        await check_owner(sid, request)
        return fhir_response(await run_in_threadpool(get_engine().status, sid, base(request)))

    @router.get("/Subscription/{sid}/$events")
    @router.post("/Subscription/{sid}/$events")  # two routes, not one api_route: one OpenAPI operation id each
    async def events(sid: str, request: Request) -> Response:
        inputs = await _inputs(request)
        await check_owner(sid, request)
        since = _number("eventsSinceNumber", inputs.get("eventsSinceNumber"))
        until = _number("eventsUntilNumber", inputs.get("eventsUntilNumber"))
        bundle = await run_in_threadpool(get_engine().events, sid, since, until, inputs.get("content"), base(request))
        return fhir_response(bundle)

    return router

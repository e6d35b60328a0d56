"""The FHIR R4 REST API of the embedded store, mounted under ``/fhir`` (thin: logic in fhirstore).

    GET    /metadata                     CapabilityStatement (generated from the search params)
    POST   /                             transaction or batch Bundle
    GET    /{type}?…  POST /{type}/_search   search (Bundle searchset)
    GET    /{type}/_history              type history
    GET    /{type}/{id}                  read (ETag, Last-Modified; 404 unknown, 410 deleted)
    GET    /{type}/{id}/_history[/{vid}] instance history, vread
    POST   /{type}                       create (server id; If-None-Exist = conditional create)
    PUT    /{type}/{id}                  update or create (If-Match → 412 when stale)
    PUT    /{type}?criteria              conditional update
    DELETE /{type}/{id}                  delete (then read → 410)

Anything else under ``/fhir`` is a 405 (unknown type, or an interaction we do not support) or a
404 (unknown path under a known type), always as an OperationOutcome.

Every answer goes through :func:`~gateway.fhirstore.secrets.mask_secrets` (Subscription header
values come back as ``***``), and every client write through the store's write checks
(``FhirStore.check_write``: e.g. a Subscription endpoint on a private address is a 422). Reads,
searches and histories go through :func:`~gateway.http.visibility.view_of`: an organisation-scoped
client sees only what the care-team and consent rule allows (404 for the rest, see there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.errors import StoreError
from gateway.fhirstore import FhirStore
from gateway.fhirstore.bundles import history_bundle, operation_outcome, searchset
from gateway.fhirstore.capability import Routes, capability_statement
from gateway.fhirstore.interactions import (
    Interaction,
    Result,
    check,
    execute,
    parse_criteria,
    parse_if_match,
    resolve,
)
from gateway.fhirstore.params import supported
from gateway.fhirstore.secrets import mask_secrets
from gateway.fhirstore.transaction import process_bundle
from gateway.http.fhir_io import (
    FhirRoute,
    fhir_response,
    outcome_response,
    read_json,
    return_minimal,
    strict_handling,
    version_headers,
)
from gateway.http.visibility import check_bundle_reads, scoped_bundle, view_of
from gateway.security.boundary import boundary_of
from gateway.security.limits import check_param_count, limits_of, query_param_count

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def make_fhir_router(get_store: Callable[[], FhirStore], *, base_path: str = "/fhir") -> APIRouter:
    """The FHIR API router; mount it with ``prefix=base_path`` (links and fullUrls use it)."""
    router = APIRouter(route_class=FhirRoute)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + base_path

    def write(inter: Interaction, request: Request) -> Result:
        """One REST write, asked of the caller's boundary (gateway/security/boundary.py) like a Bundle entry."""
        guard = boundary_of(request, get_store())
        check(inter)
        guard.prepare(inter)
        get_store().check_write(inter.resource)
        with get_store().writing() as writer:
            resolve(writer, inter, guard.reach)
            guard.check(writer, inter)
            return execute(writer, inter)

    def written(request: Request, result: Result) -> Response:
        o = result.outcome
        assert o is not None
        headers = version_headers(o.version, o.lu_ms)
        if result.status == 201:
            headers["Location"] = f"{base(request)}/{o.rtype}/{o.id}/_history/{o.version}"
        return _respond(None if return_minimal(request) else o.resource, result.status, headers)

    @router.get("/metadata")
    def metadata(request: Request) -> Response:
        routes = getattr(request.app.state, "fhir_routes", Routes())  # set by gateway.app.create_app
        return _respond(capability_statement(base(request), routes=routes))

    @router.post("")
    @router.post("/")
    async def bundle(request: Request) -> Response:
        body = await read_json(request)
        check_bundle_reads(request, body)
        guard = boundary_of(request, get_store())
        response = await run_in_threadpool(process_bundle, get_store(), body, base(request), guard)
        return _respond(scoped_bundle(guard, response))

    @router.get("/{rtype}/_history")
    def type_history(rtype: str, request: Request) -> Response:
        params = request.query_params.multi_items()
        q, page = view_of(request, get_store()).history(rtype, None, params, strict=strict_handling(request))
        return _respond(history_bundle(base(request), f"{base(request)}/{rtype}/_history", q, page))

    @router.get("/{rtype}/_search")
    @router.get("/{rtype}")
    def search(rtype: str, request: Request) -> Response:
        return _search(rtype, request.query_params.multi_items(), request)

    @router.post("/{rtype}/_search")
    async def search_post(rtype: str, request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip()
        if media != "application/x-www-form-urlencoded":
            raise StoreError("_search takes application/x-www-form-urlencoded", status=415,
                             issue_code="not-supported")
        raw = await request.body()  # within PIVOT_HTTP_MAX_FORM_BYTES (gateway/security/limits.py)
        counted = query_param_count(raw) + query_param_count(request.scope.get("query_string", b""))
        check_param_count(counted, limits_of(request.scope))
        form = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        params = request.query_params.multi_items() + form
        return await run_in_threadpool(_search, rtype, params, request)

    def _search(rtype: str, params: list[tuple[str, str]], request: Request) -> Response:
        q, page = view_of(request, get_store()).search(rtype, params, strict=strict_handling(request))
        return _respond(searchset(base(request), q, page))

    @router.get("/{rtype}/{rid}/_history")
    def instance_history(rtype: str, rid: str, request: Request) -> Response:
        params = request.query_params.multi_items()
        q, page = view_of(request, get_store()).history(rtype, rid, params, strict=strict_handling(request))
        return _respond(history_bundle(base(request), f"{base(request)}/{rtype}/{rid}/_history", q, page))

    @router.get("/{rtype}/{rid}/_history/{vid}")
    def vread(rtype: str, rid: str, vid: str, request: Request) -> Response:
        entry = view_of(request, get_store()).vread(rtype, rid, vid)
        return _respond(entry.resource, 200, version_headers(entry.version, entry.lu_ms))

    @router.get("/{rtype}/{rid}")
    def read(rtype: str, rid: str, request: Request) -> Response:
        entry = view_of(request, get_store()).read(rtype, rid)
        return _respond(entry.resource, 200, version_headers(entry.version, entry.lu_ms))

    @router.post("/{rtype}")
    async def create(rtype: str, request: Request) -> Response:
        _known(rtype)
        body = await read_json(request)
        none_exist = request.headers.get("if-none-exist")
        criteria = parse_criteria(none_exist) if none_exist else None
        inter = Interaction("POST", rtype, resource=body, if_none_exist=criteria)
        return written(request, await run_in_threadpool(write, inter, request))

    @router.put("/{rtype}/{rid}")
    async def update(rtype: str, rid: str, request: Request) -> Response:
        _known(rtype)
        body = await read_json(request)
        inter = Interaction("PUT", rtype, rid, resource=body, if_match=parse_if_match(request.headers.get("if-match")))
        return written(request, await run_in_threadpool(write, inter, request))

    @router.put("/{rtype}")
    async def conditional_update(rtype: str, request: Request) -> Response:
        _known(rtype)
        body = await read_json(request)
        inter = Interaction("PUT", rtype, params=request.query_params.multi_items(), resource=body,
                            if_match=parse_if_match(request.headers.get("if-match")))
        return written(request, await run_in_threadpool(write, inter, request))

    @router.delete("/{rtype}/{rid}")
    def delete(rtype: str, rid: str, request: Request) -> Response:
        inter = Interaction("DELETE", rtype, rid, if_match=parse_if_match(request.headers.get("if-match")))
        result = write(inter, request)
        assert result.outcome is not None
        text = "deleted" if result.outcome.changed else "already deleted"
        return _respond(operation_outcome("information", "informational", text), 200,
                        version_headers(result.outcome.version, result.outcome.lu_ms))

    @router.api_route("", methods=_ALL_METHODS, include_in_schema=False)  # not an API: the 405/404 answers
    @router.api_route("/{rest:path}", methods=_ALL_METHODS, include_in_schema=False)
    def fallback(request: Request, rest: str = "") -> Response:
        head, _, tail = rest.partition("/")
        if head[:1].isupper() and not supported(head):
            return outcome_response(405, "not-supported", "resource type not supported by this server")
        if head in ("", "metadata", "_history") or (supported(head) and tail.count("/") <= 2):
            return outcome_response(405, "not-supported", f"{request.method} is not supported here")
        return outcome_response(404, "not-found", "no such FHIR endpoint")

    return router


def _known(rtype: str) -> None:
    """Refuse an unsupported type before reading the body (405)."""
    if not supported(rtype):
        raise StoreError("resource type not supported by this server", status=405, issue_code="not-supported")


def _respond(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON response of the store's API, write-only values (Subscription headers) masked."""
    return fhir_response(mask_secrets(body), status, headers)

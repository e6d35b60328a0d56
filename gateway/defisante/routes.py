"""The Défi Santé FHIR operations, mounted under ``/fhir`` before the store's own routes (thin:
the logic is in ``service.py`` and the modules it composes). Every answer is the program as the
caller may see it (``scoped.py``: an organisation's client sees its own care teams' clients only).

    GET  /Patient/$defi-sante-candidates          searchset Bundle (or CSV with _format=csv)
    POST /Patient/{id}/$defi-sante-enroll          Parameters → transaction-response Bundle
    POST /Patient/{id}/$defi-sante-disenroll       Parameters (optional end) → transaction-response
    GET  /Group/defi-sante                         the cohort as a Group
    GET  /Group/defi-sante/$defi-sante-outcomes    Parameters (or CSV with _format=csv)
    GET  /CodeSystem/{id}, /StructureDefinition/{id}, /OperationDefinition/{id}   read-only
    GET  /CodeSystem, /StructureDefinition, /OperationDefinition                 all of them
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import date

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.defisante import candidates as cand
from gateway.defisante import conformance, outcomes
from gateway.defisante.codes import JSON, PROGRAM
from gateway.defisante.enrollment import bad
from gateway.defisante.scoped import ScopedProgram
from gateway.defisante.service import DefiSante, outcome_bundle
from gateway.errors import StoreError
from gateway.fhirstore.dates import instant_text
from gateway.http.fhir_io import FhirRoute, fhir_response, read_json
from gateway.security.boundary import boundary_of

_LIMITS = {"window": (1, 120), "threshold": (1, 1000), "top": (1, 10_000)}


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    lo, hi = _LIMITS[name]
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise bad(f"parameter {name}: an integer between {lo} and {hi}")
    return int(text)


def _csv(request: Request) -> bool:
    return request.query_params.get("_format", "") in ("csv", "text/csv")


def _text(body: str, filename: str) -> Response:
    return Response(content=body.encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def _optional_json(request: Request) -> object:
    if not (await request.body()).strip():
        return None
    return await read_json(request)


def make_defisante_router(get_service: Callable[[], DefiSante], *, base_path: str = "/fhir") -> APIRouter:
    """The operations router; mount it with ``prefix=base_path`` BEFORE the FHIR store router."""
    router = APIRouter(route_class=FhirRoute)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + base_path

    def scoped(request: Request) -> DefiSante:
        """The program as the caller may see it (gateway/defisante/scoped.py)."""
        service = get_service()
        return ScopedProgram(service, boundary_of(request, service.store))

    @router.get("/Patient/$defi-sante-candidates")
    def candidates(request: Request) -> Response:
        reference = request.query_params.get("date")
        try:
            day = date.fromisoformat(reference) if reference else None
        except ValueError:
            raise bad("parameter date: a date YYYY-MM-DD") from None
        query = cand.Query(_int(request, "window", cand.DEFAULT_WINDOW_MONTHS),
                           _int(request, "threshold", cand.DEFAULT_THRESHOLD), _int(request, "top", cand.DEFAULT_TOP),
                           day)
        chosen = request.query_params.get("exclusion")
        exclusions = None if chosen is None else [x for x in chosen.split(",") if x and x != "none"]
        found = scoped(request).candidates(query, exclusions)
        if _csv(request):
            return _text(cand.csv_text(found.result, found.patients, found.nams), "defi-sante-candidates.csv")
        return fhir_response(cand.bundle(found.result, found.patients, base(request), str(request.url)))

    @router.post("/Patient/{rid}/$defi-sante-enroll")
    async def enroll(rid: str, request: Request) -> Response:
        body = await read_json(request)
        written = await run_in_threadpool(scoped(request).enroll, rid, body, dict(request.headers))
        created = any(o.status == "created" for o in written)
        return fhir_response(outcome_bundle(written), 201 if created else 200)

    @router.post("/Patient/{rid}/$defi-sante-disenroll")
    async def disenroll(rid: str, request: Request) -> Response:
        body = await _optional_json(request)
        written = await run_in_threadpool(scoped(request).disenroll, rid, body, dict(request.headers))
        return fhir_response(outcome_bundle(written))

    @router.get(f"/Group/{PROGRAM}")
    def group(request: Request) -> Response:
        return fhir_response(scoped(request).group())

    @router.get(f"/Group/{PROGRAM}/$defi-sante-outcomes")
    @router.get("/Group/$defi-sante-outcomes")
    def outcomes_op(request: Request) -> Response:
        service = scoped(request)
        lines, as_of = service.outcomes(request.query_params.get("date"), request.query_params.get("patient"))
        if _csv(request):
            return _text(outcomes.csv_text(lines, service.min_follow_up_days), "defi-sante-outcomes.csv")
        return fhir_response(outcomes.parameters(lines, as_of, service.min_follow_up_days))

    @router.get("/Group/{gid}/$defi-sante-outcomes")
    def unknown_group(gid: str) -> Response:
        raise StoreError(f"only Group/{PROGRAM} (the whole cohort) is known", status=404, issue_code="not-found")

    for rtype in conformance.TYPES:
        _conformance_routes(router, rtype, base)
    return router


def _conformance_routes(router: APIRouter, rtype: str, base: Callable[[Request], str]) -> None:
    @router.get(f"/{rtype}/{{rid}}", name=f"read-{rtype}")
    def read(rid: str) -> Response:
        res = conformance.get(rtype, rid)
        if res is None:
            raise StoreError("resource not found", status=404, issue_code="not-found")
        return fhir_response(res)

    @router.get(f"/{rtype}", name=f"search-{rtype}")
    def search(request: Request) -> Response:
        url = request.query_params.get("url")
        items = [r for r in conformance.of_type(rtype) if url is None or r.get("url") == url]
        bundle: JSON = {"resourceType": "Bundle", "id": uuid.uuid4().hex,
                        "meta": {"lastUpdated": instant_text(int(time.time() * 1000))}, "type": "searchset",
                        "total": len(items), "link": [{"relation": "self", "url": str(request.url)}]}
        if items:
            bundle["entry"] = [{"fullUrl": f"{base(request)}/{rtype}/{r['id']}", "resource": r,
                                "search": {"mode": "match"}} for r in items]
        return fhir_response(bundle)

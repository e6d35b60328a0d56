"""FHIR-over-HTTP plumbing: JSON responses, OperationOutcome errors, request bodies and headers.

Every error under ``/fhir`` leaves as an OperationOutcome with the right status: ``StoreError``
carries its own status; the few exceptions bad input causes deep down (``_INPUT_ERRORS``: a number
out of SQLite's range, a query past SQLite's limits) are a 400; anything else is a 500 whose body
says only "internal error" and whose log line names the route template and the exception type
(never the message, which could quote data).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from gateway.errors import StoreError
from gateway.fhirstore.bundles import operation_outcome
from gateway.fhirstore.queries import past_limits
from gateway.security.limits import BodyTooLarge, body_limit, declared_length, limits_of, parse_json

log = logging.getLogger("pivot.fhir")

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "")


def fhir_response(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON response (``application/fhir+json; charset=utf-8``); no body for None."""
    content = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    resp = Response(content=content, status_code=status, headers=headers)
    if body is not None:
        resp.headers["content-type"] = f"{FHIR_JSON}; charset=utf-8"
    return resp


def outcome_response(status: int, code: str, message: str, severity: str = "error") -> Response:
    return fhir_response(operation_outcome(severity, code, message), status)


def store_error_response(exc: StoreError) -> Response:
    return outcome_response(exc.status, exc.issue_code, exc.message)


# exceptions the request's own input causes (a number past SQLite's range, a query past its limits):
# a 400 OperationOutcome and a WARNING naming the route and the type, not a 500
_INPUT_ERRORS: tuple[tuple[type[BaseException], str, str], ...] = (
    (OverflowError, "invalid", "a number in the request is out of range"),
    (RecursionError, "too-costly", "the request nests too deeply"),
    (UnicodeError, "invalid", "the request is not valid UTF-8"),
)


def _input_error(request: Request, exc: BaseException) -> Response | None:
    found = next(((code, why) for kind, code, why in _INPUT_ERRORS if isinstance(exc, kind)), None)
    if found is None and past_limits(exc):
        found = ("too-costly", "the request is too complex")
    if found is None:
        return None
    route = request.scope.get("route")
    log.warning("fhir %s %s refused: %s", request.method, getattr(route, "path", "?"), type(exc).__name__)
    return outcome_response(400, *found)


def _internal_error(request: Request, exc: BaseException) -> Response:
    route = request.scope.get("route")
    where = getattr(route, "path", "?")
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("fhir %s %s failed with %s\n%s", request.method, where, type(exc).__name__, frames)
    return outcome_response(500, "exception", "internal error")


class FhirRoute(APIRoute):
    """An APIRoute whose errors become OperationOutcomes (works for a router mounted anywhere)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except StoreError as exc:
                return store_error_response(exc)
            except Exception as exc:  # noqa: BLE001 - the boundary: nothing leaks, everything is logged
                return _input_error(request, exc) or _internal_error(request, exc)

        return handle


def install_fhir_error_handler(app: FastAPI) -> None:
    """Also answer StoreError raised outside the FHIR routes with an OperationOutcome."""

    async def on_store_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreError)
        return store_error_response(exc)

    app.add_exception_handler(StoreError, on_store_error)


async def read_json(request: Request) -> Any:
    """The request body as JSON: 415 for another media type, 413 when over the route's limit (before
    reading it, or as soon as the bytes read pass it), 400 when not JSON or past the shape limits
    (gateway/security/limits.py)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _JSON_TYPES:
        raise StoreError("the body must be FHIR JSON (application/fhir+json)", status=415,
                         issue_code="not-supported")
    limits = limits_of(request.scope)
    cap = body_limit(limits, request.method, request.scope.get("path", "")) or limits.body_bytes
    declared = declared_length(request.scope)
    if declared is not None and declared > cap:
        raise BodyTooLarge(cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(cap)
        chunks.append(chunk)
    return parse_json(b"".join(chunks), limits)


def strict_handling(request: Request) -> bool:
    """``Prefer: handling=strict`` (unknown search parameters are then an error)."""
    prefer = request.headers.get("prefer", "")
    return any(part.strip().replace(" ", "") == "handling=strict" for part in prefer.split(";") + prefer.split(","))


def return_minimal(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return "return=minimal" in prefer.replace(" ", "")


def version_headers(version: int, lu_ms: int) -> dict[str, str]:
    """ETag and Last-Modified of one resource version."""
    moment = datetime.fromtimestamp(lu_ms / 1000, tz=UTC)
    return {"ETag": f'W/"{version}"', "Last-Modified": format_datetime(moment, usegmt=True)}

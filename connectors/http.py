"""``POST /hl7v2``: one ER7 message as the request body, the ACK as the response body (CONTRACT.md).

Accepted content types: ``x-application/hl7-v2+er7`` (the HL7 media type), ``application/hl7-v2``
and ``text/plain``; anything else is 415 with a FHIR OperationOutcome. The answer is always 200
with an ACK for a message the intake looked at (AA, AE or AR: the HL7 outcome is in MSA-1), so
HTTP senders handle outcomes the way MLLP senders do. In enhanced mode the response holds the last
ACK the intake produced (the application ACK when MSH-16 asks for one, else the commit ACK).
A body larger than ``max_bytes`` gets the same AR as an oversize MLLP frame, and only its first
64 KB are held in memory; ``503`` is never used: "system down" is an AR the sender retries. A
sender that leaves mid-body gets nothing and leaves nothing (an INFO line, no traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from connectors.base import Origin, Receiver, Reply
from gateway.errors import ParseError

log = logging.getLogger("pivot.http")
TRANSPORT = "http"
ER7_MEDIA_TYPE = "x-application/hl7-v2+er7"
ACCEPTED_TYPES = frozenset({ER7_MEDIA_TYPE, "application/hl7-v2", "application/hl7-v2+er7", "text/plain"})
_HEAD_KEPT = 64 * 1024


def operation_outcome(status: int, code: str, text: str) -> JSONResponse:
    """A FHIR OperationOutcome error response (no message content in ``text``)."""
    body: dict[str, Any] = {"resourceType": "OperationOutcome",
                            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")


class HttpConnector:
    """The HTTP transport: a router served by the gateway's web server (start/stop have nothing to do)."""

    name = "http"

    def __init__(self, get_receiver: Callable[[], Receiver], *, max_bytes: int = 2 * 1024 * 1024) -> None:
        self.get_receiver = get_receiver
        self.max_bytes = max_bytes
        self.router = self._router()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/hl7v2", response_model=None, summary="Submit one HL7v2 ER7 message; the ACK is returned")
        async def post_hl7v2(request: Request) -> Response:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in ACCEPTED_TYPES:
                return operation_outcome(415, "not-supported",
                                         f"Content-Type must be {ER7_MEDIA_TYPE} or text/plain")
            try:
                body, size = await _read_body(request, self.max_bytes)
            except ClientDisconnect:  # the sender left mid-body: nothing to answer, nothing to keep
                log.info("HTTP client left before the end of its message")
                return Response(status_code=400)
            peer = f"{request.client.host}:{request.client.port}" if request.client else ""
            receiver = self.get_receiver()
            origin = Origin(TRANSPORT, peer, identity=str(getattr(request.state, "pivot_client_id", "") or ""))
            if size > self.max_bytes:
                error = ParseError(f"message larger than the {self.max_bytes}-byte limit", hl7_code="207")
                reply: Reply = await run_in_threadpool(receiver.refuse, body[:_HEAD_KEPT], error, origin)
            else:
                reply = await run_in_threadpool(receiver.receive, body, origin)
            ack = reply.acks[-1] if reply.acks else b""
            return Response(content=ack, status_code=200, media_type=ER7_MEDIA_TYPE,
                            headers={"X-HL7-Ack-Code": reply.code})

        return router


async def _read_body(request: Request, max_bytes: int) -> tuple[bytes, int]:
    """The body and its size; past ``max_bytes`` only its first 64 KB are kept (the rest is read
    and dropped), so an oversize request costs no more memory than an oversize MLLP frame."""
    declared = request.headers.get("content-length", "")
    keep = _HEAD_KEPT if declared.isdigit() and int(declared) > max_bytes else max_bytes + 1
    parts: list[bytes] = []
    held = size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if held < keep:
            part = chunk[: keep - held]
            parts.append(part)
            held += len(part)
    body = b"".join(parts)
    return (body[:_HEAD_KEPT] if size > max_bytes else body), size


def make_hl7v2_router(get_receiver: Callable[[], Receiver], *, max_bytes: int = 2 * 1024 * 1024) -> APIRouter:
    """The ``POST /hl7v2`` router for the gateway's FastAPI app."""
    return HttpConnector(get_receiver, max_bytes=max_bytes).router

"""Request limits, applied before anything is parsed (and after the guard's scope check).

    query string    more than PIVOT_HTTP_MAX_QUERY_PARAMS parameters (and comma-separated values)  400
    request body    Content-Length over the route's limit: refused before a byte is read           413
                    a chunked body: counted as it arrives, refused when it passes the limit        413
    JSON body       more than PIVOT_HTTP_MAX_JSON_VALUES values, nested deeper than
                    PIVOT_HTTP_MAX_JSON_DEPTH, or an array (object) longer than
                    PIVOT_HTTP_MAX_JSON_ARRAY (a pre-scan of the bytes, before json.loads)           400

The body limit of a route (table ``_BODY_LIMITS``): a transaction/batch Bundle
(``POST /fhir``) PIVOT_HTTP_MAX_BUNDLE_BYTES; a form (``POST …/_search``, ``/auth/token``)
PIVOT_HTTP_MAX_FORM_BYTES; ``POST /hl7v2`` none here (its connector answers an oversize message
with an AR, as MLLP does); anything else PIVOT_HTTP_MAX_BODY_BYTES. Every refusal is an
OperationOutcome. :class:`RequestLimits` is the ASGI middleware; it sits inside the guard
(gateway/security/middleware.py), which reads a Bundle's body itself with :func:`read_capped`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import StoreError
from gateway.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_LIMITS = "pivot_limits"  # the Limits of the app, in the request state (read_json reads them there)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one app (defaults: those of Settings)."""

    body_bytes: int = 4 * 1024 * 1024
    bundle_bytes: int = 16 * 1024 * 1024
    form_bytes: int = 64 * 1024
    json_depth: int = 64
    json_array: int = 10_000
    json_values: int = 500_000
    query_params: int = 100

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.http_max_body_bytes, settings.http_max_bundle_bytes, settings.http_max_form_bytes,
                   settings.http_max_json_depth, settings.http_max_json_array, settings.http_max_json_values,
                   settings.http_max_query_params)


class BodyTooLarge(StoreError):
    """A request body over its route's limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than the {limit}-byte limit of this route", status=413,
                         issue_code="too-costly")


# (method or "*", path predicate, limit attribute; None = the route limits its body itself); first match wins
_BODY_LIMITS: tuple[tuple[str, Callable[[str], bool], str | None], ...] = (
    ("*", lambda p: p == "/hl7v2", None),
    ("POST", lambda p: p in ("/fhir", "/fhir/"), "bundle_bytes"),
    ("*", lambda p: p.endswith("/_search") or p == "/auth/token", "form_bytes"),
    ("*", lambda p: True, "body_bytes"),
)


def body_limit(limits: Limits, method: str, path: str) -> int | None:
    """The body limit of ``method path`` in bytes; None when the route applies its own."""
    for want, matches, attribute in _BODY_LIMITS:
        if want in ("*", method.upper()) and matches(path):
            return None if attribute is None else int(getattr(limits, attribute))
    return None  # pragma: no cover - the last row matches everything


def limits_of(scope: Scope) -> Limits:
    """The limits the middleware put in the request state (the defaults when it did not run)."""
    found = scope.get("state", {}).get(STATE_LIMITS)
    return found if isinstance(found, Limits) else Limits()


def declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number (None when absent or not a number)."""
    for key, value in scope.get("headers", []):
        if bytes(key).lower() == b"content-length":
            text = bytes(value).strip()
            return int(text) if text.isdigit() and len(text) < 19 else None
    return None


def counting(receive: Receive, limit: int) -> Receive:
    """``receive``, raising BodyTooLarge as soon as the body read so far passes ``limit`` bytes."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


async def read_capped(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body through ``receive``; BodyTooLarge before reading when its Content-Length is
    over ``limit`` bytes, else as soon as the bytes read pass it."""
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def query_param_count(query: bytes) -> int:
    """Parameters of a query string, each comma-separated value counted (``a=1,2&b`` → 3); counts
    only, nothing split or decoded."""
    if not query:
        return 0
    return query.count(b"&") + 1 + query.count(b",") + query.count(b"%2C") + query.count(b"%2c")


def check_param_count(count: int, limits: Limits) -> None:
    if count > limits.query_params:
        raise StoreError(f"more than {limits.query_params} parameters (or comma-separated values)", status=400,
                         issue_code="too-costly")


# the bytes that are neither brackets nor commas; an innermost container (nothing but commas inside)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b"[]{},")))
_INNERMOST = re.compile(rb"[\[{],*[\]}]")
_CHUNK = 1 << 20


def _structure(raw: bytes) -> bytes:
    """The brackets and commas of ``raw`` that are outside strings (C-speed bytes operations only)."""
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")  # escaped backslashes, then escaped quotes
    kept: list[bytes] = []
    inside = False  # in a string at the start of this chunk
    for start in range(0, len(text), _CHUNK):
        parts = text[start:start + _CHUNK].split(b'"')
        kept.append(b"".join(parts[1 if inside else 0::2]).translate(None, _NOT_STRUCTURE))
        inside ^= len(parts) % 2 == 0
    return b"".join(kept)


def check_json_shape(raw: bytes, limits: Limits) -> None:
    """StoreError 400 when ``raw`` has more than ``json_values`` values, nests deeper than
    ``json_depth``, or has an array (or object) of more than ``json_array`` elements (members).

    No recursion and no Python loop over the bytes: strings and scalars are removed, leaving
    brackets and commas; each pass removes the innermost containers (after checking their comma
    runs), so a document ``json_depth`` deep is gone after ``json_depth`` passes. Only the shape is
    looked at: a body that is not JSON at all passes here and fails in json.loads.
    """
    shape = _structure(raw)
    if shape.count(b",") + shape.count(b"[") + shape.count(b"{") > limits.json_values:
        raise _too_costly(f"more than {limits.json_values} JSON values")
    too_long = re.compile(rb"[\[{],{%d,}[\]}]" % limits.json_array)
    for _level in range(limits.json_depth):
        if too_long.search(shape):
            raise _too_costly(f"a JSON array or object of more than {limits.json_array} elements")
        shape, removed = _INNERMOST.subn(b"", shape)
        if not removed:
            return  # nothing (more) nested; unbalanced brackets are left to json.loads
    if b"[" in shape or b"{" in shape:
        raise _too_costly(f"JSON nested deeper than {limits.json_depth} levels")


def _too_costly(text: str) -> StoreError:
    return StoreError(text, status=400, issue_code="too-costly")


def _no_constants(_name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def parse_json(raw: bytes, limits: Limits) -> Any:
    """``raw`` as JSON within the shape limits: StoreError 400 when too deep/long or not JSON."""
    check_json_shape(raw, limits)
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise StoreError("the body is not valid JSON", status=400, issue_code="structure") from None


def _refusal(exc: StoreError) -> tuple[Message, Message]:
    """The two ASGI messages of an OperationOutcome answering ``exc``."""
    body = json.dumps({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": exc.issue_code, "diagnostics": exc.message}]}).encode()
    headers = [(b"content-type", b"application/fhir+json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    return ({"type": "http.response.start", "status": exc.status, "headers": headers},
            {"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: query parameter count and body size of every HTTP request (module doc)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_LIMITS] = self.limits
        try:
            check_param_count(query_param_count(bytes(scope.get("query_string", b""))), self.limits)
        except StoreError as exc:
            await _send_all(send, _refusal(exc))
            return
        limit = body_limit(self.limits, str(scope.get("method", "GET")), str(scope.get("path", "")))
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await _send_all(send, _refusal(BodyTooLarge(limit)))
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting(receive, limit), tracked)
        except BodyTooLarge as exc:  # read outside a FHIR route (which answers it itself)
            if not started:
                await _send_all(send, _refusal(exc))


async def _send_all(send: Send, messages: tuple[Message, ...]) -> None:
    for message in messages:
        await send(message)

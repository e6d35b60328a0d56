"""The HTTP guard: one ASGI middleware that authenticates, authorises and audits every request.

    request ─ token endpoint / discovery? ──────────────► our token router (token_endpoint.py)
            ─ open path (healthz, metadata)? ───────────► app
            ─ Authorization: Bearer … valid? ──✗── 401 OperationOutcome + WWW-Authenticate
            ─ every access of the request in the scopes? ──✗── 403 OperationOutcome (insufficient_scope)
            ─ app (client id in ``request.state.pivot_client_id``; an organisation-scoped client's
                   Audience in ``pivot_audience``, the Principal in ``pivot_principal``: every route
                   asks gateway/security/boundary.py what this caller may see or change)
            ─ audited route? response held until its AuditEvent is durable (else 503)

Denials on audited routes are audited too, and so are reads the care-team rule withheld (the
app notes why in ``pivot_withheld``; the AuditEvent's outcomeDesc carries it). A bundle's accesses
are read from its body (kept and replayed to the app), read within the request limits first
(gateway/security/limits.py; a client without write scopes may send a batch of reads only: 403
past PIVOT_HTTP_MAX_FORM_BYTES, without reading further); every other body is read by the app,
behind the limits middleware, after the scope check. Nothing here logs a token, a header value
or a body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from gateway.envelope import now_iso
from gateway.errors import StoreError
from gateway.fhirstore.careteam import Audience
from gateway.security.access import Access, Route, bundle_accesses, classify
from gateway.security.audit import AccessRecord
from gateway.security.audit_careteam import ACTING_CLIENT
from gateway.security.clients import Principal
from gateway.security.limits import BodyTooLarge, Limits, check_json_shape, read_capped
from gateway.security.scopes import PSEUDO_RESOURCES, permits, required_scope
from gateway.security.verify import Unauthorized

if TYPE_CHECKING:
    from gateway.security import Security

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATE_CLIENT_ID = "pivot_client_id"
STATE_AUDIENCE = "pivot_audience"  # an Audience: the caller's organisation (absent: unrestricted reads)
STATE_WITHHELD = "pivot_withheld"  # set by the app when the care-team rule withheld what was asked
STATE_PRINCIPAL = "pivot_principal"  # the Principal: scopes and registration (gateway/security/boundary.py)
ENDPOINT_PATHS = frozenset({"/auth/token", "/auth/jwks", "/.well-known/smart-configuration",
                            "/fhir/.well-known/smart-configuration"})
_WRITE_LETTERS = frozenset("cud")
_REALM = 'Bearer realm="pivot"'


def _outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, list[
        tuple[bytes, bytes]]]:
    body = json.dumps({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": code, "diagnostics": text}]}).encode()
    raw = [(b"content-type", b"application/fhir+json; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, body, raw


async def _send_outcome(send: Send, status: int, code: str, text: str, headers: dict[str, str] | None = None) -> None:
    status, body, raw = _outcome(status, code, text, headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


class SecurityMiddleware:
    """ASGI middleware; ``security`` is a :class:`gateway.security.Security`."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security
        self.limits = Limits.of(security.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        endpoints = self.security.endpoints
        if endpoints is not None and path in ENDPOINT_PATHS:
            await endpoints(scope, receive, send)
            return
        route = classify(scope.get("method", "GET"), path)
        if route.open:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else ""
        try:
            principal = await self._authenticate(scope)
        except Unauthorized as exc:
            await self._deny(scope, route, send, 401, "login", exc.reason, address, "",
                             {"WWW-Authenticate": f'{_REALM}, error="invalid_token"' if exc.reason != "missing"
                              else _REALM})
            return
        accesses = route.accesses
        if route.bundle:
            read = await self._read_bundle(scope, receive, send, route, principal, address)
            if read is None:
                return
            accesses = bundle_accesses(read)
            receive = _replay(read, receive)
        missing = [a for a in accesses if not _allowed(principal, a)]
        if missing:
            need = " ".join(required_scope(a.rtype, a.letters) for a in missing[:5])
            await self._deny(scope, route, send, 403, "forbidden", f"insufficient scope: needs {need}", address,
                             principal.client_id,
                             {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{need}"'})
            return
        # the sender identity of POST /hl7v2: empty for the anonymous principal of PIVOT_AUTH=none
        state = scope.setdefault("state", {})
        state[STATE_CLIENT_ID] = principal.client_id if principal.method != "none" else ""
        state[STATE_PRINCIPAL] = principal
        if principal.organization and principal.method != "none":
            state[STATE_AUDIENCE] = Audience(principal.organization, principal.program_wide)
        acting = ACTING_CLIENT.set(state[STATE_CLIENT_ID])  # who changed a CareTeam (audit_careteam.py)
        try:
            if route.audit is None:
                await self.app(scope, receive, send)
                return
            await self._audited(scope, receive, send, route, principal, address)
        finally:
            ACTING_CLIENT.reset(acting)

    async def _read_bundle(self, scope: Scope, receive: Receive, send: Send, route: Route, principal: Principal,
                           address: str) -> bytes | None:
        """A Bundle's body, read within the limits (gateway/security/limits.py) before its accesses
        are parsed from it; None once refused: 413 past PIVOT_HTTP_MAX_BUNDLE_BYTES, 400 past the
        JSON shape limits, and 403 past PIVOT_HTTP_MAX_FORM_BYTES for a client without write scopes
        (it may send a batch of reads only) — the last two without reading past the limit."""
        writer = _may_write(principal)
        limit = self.limits.bundle_bytes if writer else self.limits.form_bytes
        try:
            body = await read_capped(scope, receive, limit)
            check_json_shape(body, self.limits)
            return body
        except BodyTooLarge as exc:
            if writer:
                await _send_outcome(send, exc.status, exc.issue_code, exc.message)
                return None
            text = f"insufficient scope: a Bundle over {limit} bytes needs write scopes (a batch of reads is smaller)"
            await self._deny(scope, route, send, 403, "forbidden", text, address, principal.client_id,
                             {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope"'})
        except StoreError as exc:
            await _send_outcome(send, exc.status, exc.issue_code, exc.message)
        return None

    async def _authenticate(self, scope: Scope) -> Principal:
        authn = self.security.authenticator
        if not authn.enabled:
            return self.security.anonymous
        header = _header(scope, b"authorization")
        kind, _, token = header.partition(" ")
        if not header:
            raise Unauthorized("missing")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized("expected a Bearer token")
        return await run_in_threadpool(authn.authenticate, token.strip())

    async def _deny(self, scope: Scope, route: Route, send: Send, status: int, code: str, reason: str,
                    address: str, client_id: str, headers: dict[str, str]) -> None:
        text = "authentication required" if reason == "missing" else reason
        if route.audit is not None:
            await self.security.audit.record(AccessRecord(
                route.audit, status, client_id or "unauthenticated", address, now_iso(),
                query=scope.get("query_string", b"").decode("latin-1"), denied=text))
        self.security.metrics.inc("pivot_http_denied_total", help_text="HTTP requests refused by auth",
                                  status=str(status))
        await _send_outcome(send, status, code, text, headers)

    async def _audited(self, scope: Scope, receive: Receive, send: Send, route: Route, principal: Principal,
                       address: str) -> None:
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        status = 500
        try:
            await self.app(scope, receive, hold)
        finally:
            start = next((m for m in held if m["type"] == "http.response.start"), None)
            if start is not None:
                status = int(start["status"])
            body = b"".join(bytes(m.get("body", b"")) for m in held if m["type"] == "http.response.body")
            location = next((bytes(v).decode("latin-1") for k, v in (start or {}).get("headers", [])
                             if bytes(k).lower() == b"location"), "")
            assert route.audit is not None
            withheld = str(scope.get("state", {}).get(STATE_WITHHELD, ""))
            record = AccessRecord(route.audit, status, principal.client_id, address, now_iso(),
                                  query=scope.get("query_string", b"").decode("latin-1"), body=body,
                                  location=location, denied=withheld)
            durable = await self.security.audit.record(record)
        if not durable:
            await _send_outcome(send, 503, "transient", "the access could not be audited; try again",
                                {"Retry-After": "5"})
            return
        for message in held:
            await send(message)


def _allowed(principal: Principal, access: Access) -> bool:
    return all(permits(principal.scopes, access.rtype, letter) for letter in access.letters)


def _may_write(principal: Principal) -> bool:
    """True when a scope of ``principal`` grants a create, update or delete on some resource type."""
    return any(scope.letters & _WRITE_LETTERS and scope.rtype not in PSEUDO_RESOURCES for scope in principal.scopes)


def _replay(body: bytes, upstream: Receive) -> Receive:
    """A receive that gives the already-read body once, then defers to the real one (disconnects)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive

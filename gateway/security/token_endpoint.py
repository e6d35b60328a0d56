"""Our own SMART Backend Services token endpoint, for small deployments (``PIVOT_AUTH`` has ``smart``).

    POST /auth/token   grant_type=client_credentials, scope=…,
                       client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer,
                       client_assertion=<JWT signed by the client's private key>
    GET  /auth/jwks    our public key (to verify the tokens we issue elsewhere)
    GET  /.well-known/smart-configuration, /fhir/.well-known/smart-configuration

The assertion is checked against the public keys registered for the client in the clients file:
``iss`` = ``sub`` = client id, ``aud`` = our token URL as configured (``PIVOT_AUTH_TOKEN_URL``,
required with ``smart``: never taken from the request's Host, which the client chooses; the
discovery documents name that URL too), ``exp`` at most 5 minutes ahead, ``jti`` never seen
before (replays refused), alg RS384, ES384 or RS256. The access token granted is an ES384 JWT
with the requested scopes the client is registered for, valid ``PIVOT_AUTH_TOKEN_LIFETIME_S``,
signed by a P-384 key kept under the data dir (``auth-signing-key.pem``, 0600, created on first
start). Errors are RFC 6749 JSON
(``invalid_client``, ``invalid_scope``, ``unsupported_grant_type``, ``invalid_request``); a form
over PIVOT_HTTP_MAX_FORM_BYTES is refused before it is read past that (``invalid_request``, 413).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from gateway.eventlog.embedded import private_dir
from gateway.security.clients import ClientRegistry
from gateway.security.limits import BodyTooLarge, read_capped
from gateway.security.scopes import narrow
from gateway.security.verify import ALGORITHMS, LEEWAY_S

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OWN_ISSUER = "urn:pivot:token-endpoint"
OWN_AUDIENCE = "urn:pivot:api"
MAX_ASSERTION_LIFETIME_S = 300
_MAX_FORM_BYTES = 64 * 1024


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-384 signing key at ``path``, created (0600) when absent."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        private_dir(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        from gateway.errors import ConfigError

        raise ConfigError(f"invalid setting PIVOT_DATA_DIR: {path.name} is not an EC private key")
    return loaded


class _Refused(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


class TokenIssuer:
    """Verifies client assertions and issues short-lived access tokens."""

    def __init__(self, registry: ClientRegistry, key: ec.EllipticCurvePrivateKey, *, token_url: str,
                 lifetime_s: int = 300, clock: Any = time.time) -> None:
        """``token_url``: PIVOT_AUTH_TOKEN_URL, the one ``aud`` client assertions must name."""
        self.registry = registry
        self.key = key
        self.public_key = key.public_key()
        self.lifetime_s = lifetime_s
        self.token_url = token_url
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.public_key, as_dict=True)
        from gateway.delivery.auth import _thumbprint

        self.kid = _thumbprint(jwk)
        self.jwk = {**jwk, "kid": self.kid, "alg": "ES384", "use": "sig"}

    def grant(self, form: dict[str, str]) -> dict[str, Any]:
        """The token response for a client-credentials form; _Refused when not granted."""
        if form.get("grant_type") != "client_credentials":
            raise _Refused("unsupported_grant_type", "only client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise _Refused("invalid_request", "a private_key_jwt client assertion is required")
        client_id = self._check_assertion(form["client_assertion"])
        client = self.registry.get(client_id)
        assert client is not None
        scopes = narrow(form.get("scope", ""), client.scopes)
        if not scopes:
            raise _Refused("invalid_scope", "none of the requested scopes is granted to this client")
        now = int(self._clock())
        claims = {"iss": OWN_ISSUER, "aud": OWN_AUDIENCE, "sub": client_id, "client_id": client_id,
                  "scope": " ".join(scopes), "iat": now, "exp": now + self.lifetime_s, "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})
        return {"access_token": token, "token_type": "bearer", "expires_in": self.lifetime_s,
                "scope": " ".join(scopes)}

    def _check_assertion(self, assertion: str) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refused("invalid_client", "the client assertion is not a JWT") from None
        client_id = unverified.get("iss")
        client = self.registry.get(client_id) if isinstance(client_id, str) else None
        if client is None or not client.jwks:
            raise _Refused("invalid_client", "unknown client", 401)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _Refused("invalid_client", "assertion algorithm not accepted", 401)
        kid = header.get("kid")
        candidates = [k for k in client.jwks if kid is None or k.get("kid") == kid]
        for data in candidates:
            try:
                key = jwt.PyJWK(data, algorithm=str(alg))
                claims = jwt.decode(assertion, key, algorithms=[str(alg)], audience=self.token_url, issuer=client_id,
                                    leeway=LEEWAY_S, options={"require": ["exp", "iss", "sub", "aud", "jti"]})
            except (jwt.PyJWTError, ValueError):
                continue
            if claims["sub"] != client_id:
                raise _Refused("invalid_client", "assertion sub must equal iss", 401)
            if float(claims["exp"]) > self._clock() + MAX_ASSERTION_LIFETIME_S + LEEWAY_S:
                raise _Refused("invalid_client", "assertion lives longer than 5 minutes", 401)
            self._once(str(claims["jti"]), float(claims["exp"]))
            return str(client_id)
        raise _Refused("invalid_client", "assertion signature or claims invalid", 401)

    def _once(self, jti: str, exp: float) -> None:
        with self._lock:
            now = self._clock()
            self._seen = {j: e for j, e in self._seen.items() if e + LEEWAY_S > now}
            if jti in self._seen:
                raise _Refused("invalid_client", "assertion already used (jti replay)", 401)
            self._seen[jti] = exp

    def smart_configuration(self) -> dict[str, Any]:
        """The discovery document: configured URLs only (nothing taken from the request)."""
        token_url = self.token_url
        return {"token_endpoint": token_url, "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
                "scopes_supported": ["system/*.rs", "system/*.cruds", "system/hl7v2.c", "system/defi-sante.write",
                                     "system/metrics.r"],
                "capabilities": ["client-confidential-asymmetric"], "jwks_uri": token_url.replace("/token", "/jwks")}


def token_router(issuer: TokenIssuer, *, max_form_bytes: int = _MAX_FORM_BYTES) -> Router:
    """The Starlette routes of the token endpoint and the SMART discovery documents (a form over
    ``max_form_bytes``, PIVOT_HTTP_MAX_FORM_BYTES, is refused without being read further)."""

    async def token(request: Request) -> Response:
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        try:
            body = await read_capped(request.scope, request.receive, max_form_bytes)
        except BodyTooLarge:
            return JSONResponse({"error": "invalid_request", "error_description": "form too large"},
                                status_code=413, headers=headers)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            return JSONResponse({"error": "invalid_request", "error_description": "send a form (x-www-form-"
                                 "urlencoded)"}, status_code=400, headers=headers)
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        try:
            answer = issuer.grant(form)
        except _Refused as exc:
            return JSONResponse({"error": exc.error, "error_description": exc.description},
                                status_code=exc.status, headers=headers)
        return JSONResponse(answer, headers=headers)

    async def jwks(_request: Request) -> Response:
        return JSONResponse({"keys": [issuer.jwk]})

    async def configuration(_request: Request) -> Response:
        return JSONResponse(issuer.smart_configuration())

    return Router(routes=[
        Route("/auth/token", token, methods=["POST"]),
        Route("/auth/jwks", jwks, methods=["GET"]),
        Route("/.well-known/smart-configuration", configuration, methods=["GET"]),
        Route("/fhir/.well-known/smart-configuration", configuration, methods=["GET"]),
    ])

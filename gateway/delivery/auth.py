"""Authentication to the FHIR server, as ``httpx.Auth`` flows (they see every request and response).

- :class:`BearerAuth`: a static token, from a setting or a file (re-read when the file changes:
  rotated tokens work without a restart).
- :class:`SmartBackendAuth`: OAuth2 client credentials with a signed JWT client assertion, as in
  SMART Backend Services (RS384 for an RSA key, ES384 for a P-384 key). The access token is cached
  until shortly before it expires; a 401 from the server makes it fetch a new one, once.

Token endpoint failures raise :class:`AuthFailed` (the client retries it like an outage: bad
credentials are an operator problem, not the message's). Secrets never appear in messages or logs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ConfigError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240  # SMART: at most 5 minutes; a margin for clock skew
REFRESH_MARGIN_S = 60.0  # renew a cached token this long before it expires (at 90 % of a shorter life)


class AuthFailed(Exception):
    """The token endpoint refused or failed; ``status`` is its HTTP status (0 = unreadable answer)."""

    def __init__(self, message: str, *, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; the token comes from ``source`` (called for each request)."""

    def __init__(self, source: Callable[[], str]) -> None:
        self._source = source

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._source()}"
        yield request


def static_token(token: str) -> Callable[[], str]:
    return lambda: token


def token_file(path: Path, setting: str = "PIVOT_FHIR_TOKEN_FILE") -> Callable[[], str]:
    """A token read from ``path`` (first line), re-read whenever the file's mtime changes."""
    cache: dict[str, Any] = {"mtime": None, "token": ""}

    def read() -> str:
        try:
            mtime = path.stat().st_mtime_ns
            if mtime != cache["mtime"]:
                lines = path.read_text(encoding="utf-8").strip().splitlines()
                token = lines[0].strip() if lines else ""
                if not token:
                    raise ConfigError(f"invalid setting {setting}: the token file is empty")
                cache["mtime"], cache["token"] = mtime, token
        except OSError:
            if not cache["token"]:
                raise ConfigError(f"invalid setting {setting}: cannot read the token file") from None
        return str(cache["token"])

    read()  # fail at start-up, not at the first message
    return read


def load_signing_key(path: Path, setting: str = "PIVOT_FHIR_PRIVATE_KEY_FILE") -> tuple[Any, str, str]:
    """(private key, JWS algorithm, kid) from a PEM file; kid = RFC 7638 thumbprint of the public key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError:
        raise ConfigError(f"invalid setting {setting}: cannot read the private key file") from None
    except (ValueError, TypeError):
        raise ConfigError(f"invalid setting {setting}: not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"invalid setting {setting}: RSA keys must have at least 2048 bits")
        alg = "RS384"
    elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        alg = "ES384"
    else:
        raise ConfigError(f"invalid setting {setting}: SMART needs an RSA (RS384) or P-384 EC (ES384) key")
    jwk = jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key(), as_dict=True)
    return key, alg, _thumbprint(jwk)


def _thumbprint(jwk: dict[str, Any]) -> str:
    import base64
    import hashlib
    import json

    members = ({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]} if jwk["kty"] == "RSA"
               else {"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]})
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: client_credentials grant with a ``private_key_jwt`` client assertion.

    ``token_url`` empty → discovered from ``<base_url>/.well-known/smart-configuration``.
    """

    requires_response_body = True

    def __init__(self, *, base_url: str, client_id: str, key_file: Path, scope: str, token_url: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.scope = scope
        self.token_url = token_url
        self._key, self.alg, self.kid = load_signing_key(key_file)
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0
        self.fetched = 0  # tokens obtained (for tests and metrics)

    def assertion(self) -> str:
        """A fresh signed client assertion (iss = sub = client id, aud = token URL, unique jti)."""
        now = int(self._clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url, "iat": now,
                  "exp": now + ASSERTION_LIFETIME_S, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._token or self._clock() >= self._renew_at:
            yield from self._fetch()
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            yield from self._fetch()
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    def _fetch(self) -> Generator[httpx.Request, httpx.Response, None]:
        if not self.token_url:
            found = yield httpx.Request("GET", f"{self.base_url}/.well-known/smart-configuration",
                                        headers={"Accept": "application/json"})
            _raise_for_token_status(found, "SMART configuration")
            endpoint = _json(found).get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
                raise AuthFailed("SMART configuration has no token_endpoint", status=found.status_code)
            self.token_url = endpoint
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion()}
        answer = yield httpx.Request("POST", self.token_url, data=form, headers={"Accept": "application/json"})
        _raise_for_token_status(answer, "token endpoint")
        body = _json(answer)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthFailed("token endpoint answered without an access_token", status=answer.status_code)
        lifetime = float(body.get("expires_in") or 300)
        self._token = token
        self._renew_at = self._clock() + max(lifetime - REFRESH_MARGIN_S, lifetime * 0.9)
        self.fetched += 1


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def _raise_for_token_status(response: httpx.Response, what: str) -> None:
    if response.status_code == 200:
        return
    from gateway.delivery.retry import retry_after_s

    error = _json(response).get("error")
    code = f" ({error})" if isinstance(error, str) and error.isascii() and len(error) < 64 else ""
    raise AuthFailed(f"{what} answered HTTP {response.status_code}{code}", status=response.status_code,
                     retry_after=retry_after_s(response.headers.get("Retry-After")))

"""Bearer token verification: static tokens, our own JWTs, and JWTs of configured external issuers.

Issuers file (``PIVOT_AUTH_ISSUERS_FILE``), JSON::

    [{"issuer": "https://idp.cisss.example/realms/pivot",
      "jwks_uri": "https://idp.cisss.example/realms/pivot/protocol/openid-connect/certs",
      "audience": "https://pivot.cisss.example/fhir"}]     # audience optional

A JWT is accepted when its ``iss`` is configured, its ``alg`` is RS256, RS384 or ES384 (never
``none`` nor an HMAC), its signature checks with a key of the issuer's JWKS (fetched with httpx,
cached ``JWKS_TTL_S``, fetched again for an unknown ``kid`` at most every ``JWKS_MIN_REFRESH_S``),
and ``exp`` (required), ``nbf`` and ``aud`` hold (30 s leeway). The client id is the ``client_id``
claim, else ``azp``, else ``sub``; scopes come from ``scope`` (string) or ``scp`` (list). A client id
registered in the clients file with an ``organization`` is organisation-scoped whichever issuer
signed its token (see clients.py).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

from gateway.errors import ConfigError
from gateway.security.clients import ClientRegistry, Principal, principal_of
from gateway.security.scopes import parse_scopes

ALGORITHMS = ("RS256", "RS384", "ES384")
JWKS_TTL_S = 600.0
JWKS_MIN_REFRESH_S = 30.0
LEEWAY_S = 30
AUTH_MODES = frozenset({"none", "tokens", "smart", "jwt"})


class Unauthorized(Exception):
    """The credentials are missing or invalid; ``reason`` is safe to return (no token content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Issuer:
    """A trusted external token issuer."""

    issuer: str
    jwks_uri: str
    audience: str = ""


def load_issuers(path: Path | None) -> list[Issuer]:
    """The issuers file; ConfigError naming PIVOT_AUTH_ISSUERS_FILE when unreadable or malformed."""
    if path is None:
        return []
    import json

    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"invalid setting PIVOT_AUTH_ISSUERS_FILE: cannot read JSON from {path}") from None
    if not isinstance(items, list):
        raise ConfigError("invalid setting PIVOT_AUTH_ISSUERS_FILE: expected a list of issuers")
    out = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("issuer"), str)
                and isinstance(item.get("jwks_uri"), str) and item["jwks_uri"].startswith(("https://", "http://"))):
            raise ConfigError("invalid setting PIVOT_AUTH_ISSUERS_FILE: each issuer needs issuer and jwks_uri")
        out.append(Issuer(item["issuer"], item["jwks_uri"], str(item.get("audience", ""))))
    return out


class JwksCache:
    """The public keys of one issuer, fetched with httpx and cached; thread-safe."""

    def __init__(self, uri: str, http: httpx.Client, clock: Any = time.monotonic) -> None:
        self.uri = uri
        self._http = http
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e9
        self._lock = threading.Lock()

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for ``kid`` (or the only key usable with ``alg`` when the token has no kid)."""
        with self._lock:
            now = self._clock()
            stale = now - self._fetched_at > JWKS_TTL_S
            missing = self._find(kid, alg) is None and now - self._fetched_at > JWKS_MIN_REFRESH_S
            if stale or missing:
                self._fetch()
            found = self._find(kid, alg)
        if found is None:
            raise Unauthorized("no key of the issuer matches the token")
        return found

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        usable = [k for k in self._keys.values() if k.algorithm_name == alg]
        return usable[0] if len(usable) == 1 else None

    def _fetch(self) -> None:
        self._fetched_at = self._clock()
        try:
            response = self._http.get(self.uri, headers={"Accept": "application/json"})
            keys = response.json().get("keys", []) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            keys = None
        if not isinstance(keys, list):
            return  # keep the keys we had: an issuer outage does not log everyone out
        self._keys = {}
        for i, data in enumerate(keys):
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(data)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
                continue
            if key.algorithm_name in ALGORITHMS:
                self._keys[str(data.get("kid", f"#{i}"))] = key


class Authenticator:
    """Bearer token → Principal, per the enabled modes (``tokens``, ``smart``, ``jwt``)."""

    def __init__(self, modes: frozenset[str], registry: ClientRegistry, *, issuers: list[Issuer] | None = None,
                 own_issuer: str = "", own_key: Any = None, own_audience: str = "",
                 http: httpx.Client | None = None) -> None:
        self.modes = modes
        self.registry = registry
        self.own_issuer = own_issuer
        self.own_key = own_key
        self.own_audience = own_audience
        self._http = http or httpx.Client(timeout=10.0)
        self.issuers = {i.issuer: i for i in issuers or []}
        self._jwks = {i.issuer: JwksCache(i.jwks_uri, self._http) for i in issuers or []}

    @property
    def enabled(self) -> bool:
        return bool(self.modes - {"none"})

    def close(self) -> None:
        self._http.close()

    def authenticate(self, token: str) -> Principal:
        """The principal of a bearer token; Unauthorized when it is not valid here."""
        if not token:
            raise Unauthorized("empty bearer token")
        if "tokens" in self.modes:
            client = self.registry.by_token(token)
            if client is not None:
                return principal_of(client, "token")
        if token.count(".") == 2 and self.modes & {"smart", "jwt"}:
            return self._jwt(token)
        raise Unauthorized("unknown or invalid token")

    def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized("token algorithm not accepted")
        iss = unverified.get("iss")
        if "smart" in self.modes and self.own_key is not None and iss == self.own_issuer:
            key: Any = self.own_key
            audience = self.own_audience
            method = "smart"
        elif "jwt" in self.modes and isinstance(iss, str) and iss in self.issuers:
            key = self._jwks[iss].key(header.get("kid"), str(alg))
            audience = self.issuers[iss].audience
            method = "jwt"
        else:
            raise Unauthorized("token issuer not trusted")
        try:
            claims = jwt.decode(token, key, algorithms=[str(alg)], issuer=iss, audience=audience or None,
                                leeway=LEEWAY_S, options={"require": ["exp", "iss"], "verify_aud": bool(audience)})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("token signature or claims invalid") from None
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("sub")
        if not isinstance(client_id, str) or not client_id:
            raise Unauthorized("token names no client")
        raw = claims.get("scope", claims.get("scp", ""))
        scope_text = raw if isinstance(raw, str) else " ".join(str(s) for s in raw) if isinstance(raw, list) else ""
        registered = self.registry.get(client_id)  # its organisation, if any, limits what it reads
        return Principal(client_id, parse_scopes(scope_text), scope_text, method, str(iss),
                         organization=registered.organization if registered else "",
                         program_wide=registered.program_wide if registered else False)

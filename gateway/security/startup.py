"""Start-up checks: refuse an exposed gateway without authentication, warn on loopback.

``check_startup(settings)`` returns warnings to log and raises ConfigError (naming the settings)
when the gateway must not start:

- ``PIVOT_AUTH`` not one of none / tokens / smart / jwt (comma list) or a mode without its file;
- ``PIVOT_AUTH=smart`` without ``PIVOT_AUTH_TOKEN_URL`` (an absolute http(s) URL): the ``aud`` our
  token endpoint expects of client assertions is configuration, never the request's Host;
- ``PIVOT_HOST`` not a loopback address and ``PIVOT_AUTH=none``;
- ``PIVOT_HOST`` not a loopback address, no ``PIVOT_MLLP_TLS_CERT`` and not ``PIVOT_MLLP_PLAIN=true``.

It warns, among others, when authentication is on and MLLP senders cannot authenticate (no client
certificates): their messages get AR unless ``PIVOT_MLLP_ALLOW_ANONYMOUS=true``.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.security.verify import AUTH_MODES
from gateway.settings import Settings


def auth_modes(settings: Settings) -> frozenset[str]:
    """The set of ``PIVOT_AUTH`` modes; ConfigError for an unknown one or none mixed with others."""
    modes = frozenset(m.strip().lower() for m in settings.auth.split(",") if m.strip()) or frozenset({"none"})
    unknown = modes - AUTH_MODES
    if unknown:
        raise ConfigError(f"invalid setting PIVOT_AUTH: unknown mode {sorted(unknown)[0]!r} "
                          "(use none, or a comma list of tokens, smart, jwt)")
    if "none" in modes and len(modes) > 1:
        raise ConfigError("invalid setting PIVOT_AUTH: 'none' cannot be combined with other modes")
    return modes


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; any other name or address counts as exposed."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def required_token_url(settings: Settings) -> str:
    """PIVOT_AUTH_TOKEN_URL, the public URL of POST /auth/token: the one ``aud`` client assertions
    may name (and what the discovery documents announce); ConfigError when missing or not absolute."""
    url = settings.auth_token_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError("invalid setting PIVOT_AUTH_TOKEN_URL: required by PIVOT_AUTH=smart, the public URL of "
                          "POST /auth/token (e.g. https://pivot.example/auth/token): the aud of client assertions")
    return url


def check_startup(settings: Settings) -> list[str]:
    """Warnings to log at start; ConfigError when this configuration must not run."""
    modes = auth_modes(settings)
    warnings: list[str] = []
    if "tokens" in modes and settings.auth_tokens_file is None:
        raise ConfigError("invalid setting PIVOT_AUTH_TOKENS_FILE: required by PIVOT_AUTH=tokens")
    if "smart" in modes and settings.auth_clients_file is None:
        raise ConfigError("invalid setting PIVOT_AUTH_CLIENTS_FILE: required by PIVOT_AUTH=smart")
    if "smart" in modes:
        required_token_url(settings)
    if "jwt" in modes and settings.auth_issuers_file is None:
        raise ConfigError("invalid setting PIVOT_AUTH_ISSUERS_FILE: required by PIVOT_AUTH=jwt")
    loopback = is_loopback(settings.host)
    if modes == {"none"}:
        if not loopback:
            raise ConfigError(f"refusing to start: PIVOT_HOST={settings.host} is not a loopback address and "
                              "PIVOT_AUTH=none; set PIVOT_AUTH (tokens, smart or jwt) or bind PIVOT_HOST=127.0.0.1")
        warnings.append("HTTP authentication is off (PIVOT_AUTH=none): acceptable on loopback only")
    warnings.extend(_mllp_anonymous(settings, modes))
    if settings.mllp_tls_cert is None:
        if not loopback and not settings.mllp_plain:
            raise ConfigError(f"refusing to start: PIVOT_HOST={settings.host} is not a loopback address and MLLP "
                              "has no TLS; set PIVOT_MLLP_TLS_CERT/PIVOT_MLLP_TLS_KEY, or PIVOT_MLLP_PLAIN=true "
                              "on a trusted network")
        if not loopback:
            warnings.append("plain MLLP on a non-loopback address (PIVOT_MLLP_PLAIN=true)")
    elif not settings.mllp_tls_require_client_cert and modes == {"none"}:
        warnings.append("MLLP TLS without required client certificates: MLLP senders are anonymous")
    return warnings


def _mllp_anonymous(settings: Settings, modes: frozenset[str]) -> list[str]:
    """With authentication on, MLLP senders without a client certificate are refused (AR) unless allowed."""
    if modes == {"none"} or settings.mllp_tls_require_client_cert:
        return []
    if settings.mllp_allow_anonymous:
        return ["MLLP senders without a client certificate are accepted for any facility "
                "(PIVOT_MLLP_ALLOW_ANONYMOUS=true): trusted network only"]
    if settings.mllp_tls_client_ca is None:
        return ["MLLP has no client certificates (PIVOT_MLLP_TLS_CLIENT_CA) and PIVOT_AUTH is on: every MLLP "
                "message gets AR; set up mTLS, or PIVOT_MLLP_ALLOW_ANONYMOUS=true on a trusted network"]
    return ["MLLP clients without a certificate get AR (PIVOT_AUTH is on)"]

"""Start-up checks: refuse an exposed gateway without authentication, warn on loopback.

``check_startup(settings)`` returns warnings to log and raises ConfigError (naming the settings)
when the gateway must not start:

- ``PIVOT_AUTH`` not one of none / tokens / smart / jwt (comma list) or a mode without its file;
- ``PIVOT_HOST`` not a loopback address and ``PIVOT_AUTH=none``;
- ``PIVOT_HOST`` not a loopback address, no ``PIVOT_MLLP_TLS_CERT`` and not ``PIVOT_MLLP_PLAIN=true``.
"""

from __future__ import annotations

import ipaddress

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


def check_startup(settings: Settings) -> list[str]:
    """Warnings to log at start; ConfigError when this configuration must not run."""
    modes = auth_modes(settings)
    warnings: list[str] = []
    if "tokens" in modes and settings.auth_tokens_file is None:
        raise ConfigError("invalid setting PIVOT_AUTH_TOKENS_FILE: required by PIVOT_AUTH=tokens")
    if "smart" in modes and settings.auth_clients_file is None:
        raise ConfigError("invalid setting PIVOT_AUTH_CLIENTS_FILE: required by PIVOT_AUTH=smart")
    if "jwt" in modes and settings.auth_issuers_file is None:
        raise ConfigError("invalid setting PIVOT_AUTH_ISSUERS_FILE: required by PIVOT_AUTH=jwt")
    loopback = is_loopback(settings.host)
    if modes == {"none"}:
        if not loopback:
            raise ConfigError(f"refusing to start: PIVOT_HOST={settings.host} is not a loopback address and "
                              "PIVOT_AUTH=none; set PIVOT_AUTH (tokens, smart or jwt) or bind PIVOT_HOST=127.0.0.1")
        warnings.append("HTTP authentication is off (PIVOT_AUTH=none): acceptable on loopback only")
    if settings.mllp_tls_cert is None:
        if not loopback and not settings.mllp_plain:
            raise ConfigError(f"refusing to start: PIVOT_HOST={settings.host} is not a loopback address and MLLP "
                              "has no TLS; set PIVOT_MLLP_TLS_CERT/PIVOT_MLLP_TLS_KEY, or PIVOT_MLLP_PLAIN=true "
                              "on a trusted network")
        if not loopback:
            warnings.append("plain MLLP on a non-loopback address (PIVOT_MLLP_PLAIN=true)")
    elif not settings.mllp_tls_require_client_cert:
        warnings.append("MLLP TLS without required client certificates: MLLP senders are anonymous")
    return warnings

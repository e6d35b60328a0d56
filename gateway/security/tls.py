"""MLLP over TLS: the server ``ssl.SSLContext`` from settings, and the identity of a client certificate.

``PIVOT_MLLP_TLS_CERT`` + ``PIVOT_MLLP_TLS_KEY`` turn TLS on (TLS 1.2 minimum). With
``PIVOT_MLLP_TLS_CLIENT_CA`` client certificates signed by that CA are verified when presented
(``CERT_OPTIONAL``) or demanded (``PIVOT_MLLP_TLS_REQUIRE_CLIENT_CERT=true``, ``CERT_REQUIRED``):
a client without one, or with an untrusted one, fails the handshake and never reaches the intake.
"""

from __future__ import annotations

import ssl
from typing import Any

from gateway.errors import ConfigError
from gateway.settings import Settings


def mllp_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context of the MLLP listener, or None for plain MLLP."""
    if settings.mllp_tls_cert is None:
        if settings.mllp_tls_key or settings.mllp_tls_client_ca or settings.mllp_tls_require_client_cert:
            raise ConfigError("invalid setting PIVOT_MLLP_TLS_CERT: TLS options are set but no certificate")
        return None
    if settings.mllp_tls_key is None:
        raise ConfigError("invalid setting PIVOT_MLLP_TLS_KEY: required with PIVOT_MLLP_TLS_CERT")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.mllp_tls_cert, settings.mllp_tls_key)
    except (OSError, ssl.SSLError):
        raise ConfigError("invalid setting PIVOT_MLLP_TLS_CERT: cannot load the certificate and key "
                          "(PIVOT_MLLP_TLS_KEY)") from None
    if settings.mllp_tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(settings.mllp_tls_client_ca))
        except (OSError, ssl.SSLError):
            raise ConfigError("invalid setting PIVOT_MLLP_TLS_CLIENT_CA: cannot load the CA bundle") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.mllp_tls_require_client_cert else ssl.CERT_OPTIONAL
    elif settings.mllp_tls_require_client_cert:
        raise ConfigError("invalid setting PIVOT_MLLP_TLS_REQUIRE_CLIENT_CERT: needs PIVOT_MLLP_TLS_CLIENT_CA")
    return ctx


def certificate_cn(cert: dict[str, Any] | None) -> str:
    """The subject CN of a peer certificate as given by ``SSLSocket.getpeercert()``; '' when none."""
    if not cert:
        return ""
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""

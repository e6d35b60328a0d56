"""Build the FHIR client from Settings; every misconfiguration is a ConfigError naming its PIVOT_ setting."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import httpx

from gateway.delivery.auth import BearerAuth, SmartBackendAuth, static_token, token_file
from gateway.delivery.client import FhirClient
from gateway.errors import ConfigError
from gateway.settings import Settings

log = logging.getLogger("pivot.delivery")


def _readable(path: Path | None, setting: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ConfigError(f"invalid setting {setting}: file not found or not readable")
    return path


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verification against PIVOT_FHIR_CA_BUNDLE (else the system CAs) and the optional client certificate."""
    ca = _readable(settings.fhir_ca_bundle, "PIVOT_FHIR_CA_BUNDLE")
    cert = _readable(settings.fhir_client_cert, "PIVOT_FHIR_CLIENT_CERT")
    key = _readable(settings.fhir_client_key, "PIVOT_FHIR_CLIENT_KEY")
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except ssl.SSLError:
        raise ConfigError("invalid setting PIVOT_FHIR_CA_BUNDLE: not a PEM CA bundle") from None
    if key is not None and cert is None:
        raise ConfigError("invalid setting PIVOT_FHIR_CLIENT_CERT: required with PIVOT_FHIR_CLIENT_KEY")
    if cert is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except (ssl.SSLError, ValueError):
            raise ConfigError("invalid setting PIVOT_FHIR_CLIENT_CERT: certificate and key (PIVOT_FHIR_CLIENT_KEY) "
                              "cannot be loaded together") from None
    return ctx


def auth_from_settings(settings: Settings) -> httpx.Auth | None:
    """None, a static bearer token or SMART Backend Services, per PIVOT_FHIR_AUTH."""
    if settings.fhir_auth == "none":
        return None
    if settings.fhir_auth == "bearer":
        if settings.fhir_token is not None and settings.fhir_token.get_secret_value():
            return BearerAuth(static_token(settings.fhir_token.get_secret_value()))
        if settings.fhir_token_file is not None:
            return BearerAuth(token_file(settings.fhir_token_file))
        raise ConfigError("invalid setting PIVOT_FHIR_TOKEN: PIVOT_FHIR_AUTH=bearer needs PIVOT_FHIR_TOKEN "
                          "or PIVOT_FHIR_TOKEN_FILE")
    if not settings.fhir_client_id:
        raise ConfigError("invalid setting PIVOT_FHIR_CLIENT_ID: required with PIVOT_FHIR_AUTH=smart")
    if settings.fhir_private_key_file is None:
        raise ConfigError("invalid setting PIVOT_FHIR_PRIVATE_KEY_FILE: required with PIVOT_FHIR_AUTH=smart")
    if settings.fhir_token_url and not settings.fhir_token_url.startswith(("https://", "http://")):
        raise ConfigError("invalid setting PIVOT_FHIR_TOKEN_URL: must be an http(s) URL")
    return SmartBackendAuth(base_url=settings.fhir_base_url, client_id=settings.fhir_client_id,
                            key_file=settings.fhir_private_key_file, scope=settings.fhir_scope,
                            token_url=settings.fhir_token_url)


def client_from_settings(settings: Settings, transport: httpx.BaseTransport | None = None) -> FhirClient:
    """The client of PIVOT_FHIR_BASE_URL, checked at start-up (files exist, keys load)."""
    base = settings.fhir_base_url
    if not base.startswith(("https://", "http://")):
        raise ConfigError("invalid setting PIVOT_FHIR_BASE_URL: must be an http(s) URL of a FHIR R4 base")
    auth = auth_from_settings(settings)
    verify = tls_context(settings)
    if auth is not None and base.startswith("http://"):
        log.warning("PIVOT_FHIR_BASE_URL is plain http: credentials and health data travel unencrypted")
    return FhirClient(base, auth=auth, verify=verify, timeout_s=settings.fhir_timeout_s,
                      retry_max_s=settings.fhir_retry_max_s, transport=transport)

"""Security and privacy of the gateway: who may do what, over which transport, and who saw what.

    Security(settings, event_log, metrics)      everything below, built from PIVOT_AUTH* / MLLP_TLS*
      ├── authenticator   verify.py          static tokens, our JWTs, external issuers' JWTs (JWKS)
      ├── endpoints       token_endpoint.py  POST /auth/token (SMART Backend Services), discovery
      ├── allow-list      allowlist.py       sender identity → MSH-4 facilities, message kinds
      │                   authorities.py     … and the assigning authorities it may write (PID-3, MRG-1, PV1-19)
      ├── mllp_ssl        tls.py             MLLP over TLS / mTLS, certificate CN → client id
      └── audit           audit.py, audit_trail.py   BALP AuditEvents: audit.sqlite + ``audit`` topic
                          audit_disclosure.py        … of alerts and notifications the gateway sends
    install_security(app, security)             the ASGI guard (middleware.py) on the FastAPI app
    check_startup(settings)                     refuse an exposed gateway without auth (startup.py)

Scopes are SMART v2 (scopes.py); the route → (resource, letters) table is in access.py.
"""

from __future__ import annotations

from typing import Any

from connectors.base import Origin
from gateway.eventlog.base import EventLog
from gateway.hl7v2.tokenizer import Message
from gateway.metrics import Metrics
from gateway.security.allowlist import AllowList, ForbiddenError
from gateway.security.audit_trail import AuditTrail
from gateway.security.authorities import SiteAuthorities
from gateway.security.clients import ANONYMOUS_ID, ClientRegistry, Principal
from gateway.security.middleware import STATE_CLIENT_ID, SecurityMiddleware
from gateway.security.scopes import parse_scopes
from gateway.security.startup import auth_modes, check_startup, required_token_url
from gateway.security.tls import certificate_cn, mllp_ssl_context
from gateway.security.token_endpoint import OWN_AUDIENCE, OWN_ISSUER, TokenIssuer, load_or_create_key, token_router
from gateway.security.verify import Authenticator, load_issuers
from gateway.settings import Settings

__all__ = ["STATE_CLIENT_ID", "ForbiddenError", "Security", "check_startup", "install_security"]

_ANONYMOUS_SCOPES = "system/*.cruds system/AuditEvent.rs system/hl7v2.c system/defi-sante.cruds system/metrics.r"
_MLLP = "mllp"  # connectors.mllp.TRANSPORT


class Security:
    """The security services of one gateway process, built from Settings."""

    def __init__(self, settings: Settings, *, event_log: EventLog | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.modes = auth_modes(settings)
        self.registry = ClientRegistry.load(settings.auth_clients_file, settings.auth_tokens_file)
        self.issuer: TokenIssuer | None = None
        self.endpoints: Any = None
        if "smart" in self.modes:
            token_url = required_token_url(settings)  # ConfigError before any key is created
            key = load_or_create_key(settings.data_dir / "auth-signing-key.pem")
            self.issuer = TokenIssuer(self.registry, key, lifetime_s=settings.auth_token_lifetime_s,
                                      token_url=token_url)
            self.endpoints = token_router(self.issuer, max_form_bytes=settings.http_max_form_bytes)
        self.authenticator = Authenticator(
            self.modes, self.registry, issuers=load_issuers(settings.auth_issuers_file),
            own_issuer=OWN_ISSUER, own_key=self.issuer.public_key if self.issuer else None,
            own_audience=OWN_AUDIENCE)
        self.anonymous = Principal(ANONYMOUS_ID, parse_scopes(_ANONYMOUS_SCOPES), _ANONYMOUS_SCOPES)
        self.allow = AllowList(self.registry, SiteAuthorities.load(settings).check)
        self.mllp_ssl = mllp_ssl_context(settings)
        self.audit = AuditTrail(settings.data_dir / "audit.sqlite", event_log, settings.topic("audit"),
                                metrics=self.metrics)

    def authorize_message(self, identity: str, msg: Message) -> None:
        """Raise ForbiddenError (AR, ERR-3 207; 204 for an authority it does not own) when ``identity``
        may not send ``msg``."""
        self.allow.authorize(identity, msg)

    def authorize_sender(self, origin: Origin, msg: Message) -> None:
        """The intake's check of every message: an anonymous MLLP sender is refused (AR 207) when
        authentication is on, unless ``PIVOT_MLLP_ALLOW_ANONYMOUS``; then :meth:`authorize_message`."""
        if (not origin.identity and origin.transport == _MLLP and self.modes != {"none"}
                and not self.settings.mllp_allow_anonymous):
            raise ForbiddenError("anonymous MLLP sender: authentication is on; a client certificate is required")
        self.authorize_message(origin.identity, msg)

    def certificate_identity(self, cert: dict[str, Any] | None) -> str:
        """The sender identity of an MLLP client certificate: its client id, or ``cn:<CN>`` if unmapped.

        An unmapped CN is kept as a non-empty identity so that the allow-list refuses it.
        """
        cn = certificate_cn(cert)
        if not cn:
            return ""
        return self.registry.by_certificate_cn(cn) or f"cn:{cn}"

    def close(self) -> None:
        self.audit.close()
        self.authenticator.close()


def install_security(app: Any, security: Security) -> None:
    """Put the guard in front of every route of ``app`` (a FastAPI/Starlette application)."""
    app.add_middleware(SecurityMiddleware, security=security)

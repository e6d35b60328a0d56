"""One configuration: ``Settings`` read from ``PIVOT_*`` environment variables (see .env.example)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigError


class Settings(BaseSettings):
    """Every setting of the gateway; each has a one-line description in .env.example."""

    model_config = SettingsConfigDict(env_prefix="PIVOT_", extra="ignore")

    host: str = Field("127.0.0.1", description="address the listeners bind to")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP API, FHIR endpoint, console")
    http_request_timeout_s: float = Field(30.0, gt=0, description="close an HTTP connection whose request is not "
                                          "complete after this long")
    http_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request body (a resource, "
                                     "an operation's Parameters); larger: 413 before it is read")
    http_max_bundle_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest transaction/batch Bundle "
                                       "(POST /fhir)")
    http_max_form_bytes: int = Field(64 * 1024, ge=1024, description="largest form (POST _search, /auth/token) "
                                     "and batch of a client without write scopes")
    http_max_json_depth: int = Field(64, ge=8, le=512, description="deepest JSON nesting accepted in a body")
    http_max_json_array: int = Field(10_000, ge=100, description="longest JSON array (object) accepted in a body")
    http_max_json_values: int = Field(500_000, ge=1000, description="most JSON values accepted in one body")
    http_max_query_params: int = Field(100, ge=10, description="most query parameters (and comma-separated "
                                       "values) in one request")
    mllp_port: int = Field(2575, ge=0, le=65535, description="HL7v2 over MLLP")
    data_dir: Path = Field(Path("./var"), description="embedded log, FHIR store, dead letters")
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers; empty = embedded log")
    state_url: str = Field("", description="PostgreSQL shared by every instance (identity, dedupe, handoff, "
                           "alerts, register), e.g. postgresql://pivot@db:5432/pivot; empty = SQLite files "
                           "in the data dir (one instance)")
    kafka_topic_prefix: str = Field("pivot.", description="prefix of every topic")
    kafka_group_id: str = Field("pivot", description="consumer group prefix shared by gateway instances")
    kafka_raw_in_topic: str = Field("", description="topic of raw ER7 landed by a site (empty = off)")
    kafka_session_timeout_ms: int = Field(10000, ge=1000, description="consumer group session timeout")
    fhir_base_url: str = Field("", description="external FHIR R4 server; empty = embedded store")
    fhir_auth: Literal["none", "bearer", "smart"] = Field(
        "none", description="auth to the FHIR server: none, bearer (static token), smart (backend services)")
    fhir_token: SecretStr | None = Field(None, description="bearer token (fhir_auth=bearer)")
    fhir_token_file: Path | None = Field(None, description="file holding the bearer token, re-read on change")
    fhir_token_url: str = Field("", description="SMART token endpoint; empty = from .well-known/smart-configuration")
    fhir_client_id: str = Field("", description="SMART client id (iss and sub of the client assertion)")
    fhir_private_key_file: Path | None = Field(None, description="PEM key signing the SMART assertion (RSA/P-384)")
    fhir_scope: str = Field("system/*.read system/*.write", description="SMART scopes requested")
    fhir_ca_bundle: Path | None = Field(None, description="PEM CA bundle trusted for the FHIR server")
    fhir_client_cert: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    fhir_client_key: Path | None = Field(None, description="PEM key of the client certificate")
    fhir_timeout_s: float = Field(30.0, gt=0, description="timeout of one FHIR request")
    fhir_retry_max_s: float = Field(15.0, gt=0, description="longest wait between two delivery attempts")
    mllp_max_message_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="larger frames get AR")
    mllp_idle_timeout_s: float = Field(300.0, gt=0, description="close a silent MLLP connection")
    mllp_max_connections: int = Field(200, ge=1, description="concurrent MLLP connections")
    mllp_max_connections_per_peer: int = Field(32, ge=1, description="concurrent MLLP connections from one address")
    mllp_frame_timeout_s: float = Field(30.0, gt=0, description="an MLLP frame must end this long after its start")
    mllp_allow_anonymous: bool = Field(False, description="with PIVOT_AUTH on: accept MLLP senders without a "
                                       "client certificate (trusted network only)")
    sender_profiles: Path | None = Field(None, description="JSON file of per-sender profiles")
    identifier_systems: Path | None = Field(None, description="JSON file: assigning authority -> system")
    default_timezone: str = Field("America/Montreal", description="zone of offset-less timestamps")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    workers: bool = Field(True, description="run the mapping and store consumers in this process")
    auth: str = Field("none", description="HTTP auth: none, or a comma list of tokens, smart, jwt")
    auth_tokens_file: Path | None = Field(None, description="JSON secrets file: sha256(token) -> client, scopes")
    auth_clients_file: Path | None = Field(None, description="JSON file of registered clients (keys, scopes, senders)")
    auth_issuers_file: Path | None = Field(None, description="JSON file of trusted external JWT issuers + JWKS URLs")
    auth_token_url: str = Field("", description="public URL of POST /auth/token: the aud of client assertions "
                                "(required by PIVOT_AUTH=smart)")
    auth_token_lifetime_s: int = Field(300, ge=30, le=3600, description="lifetime of tokens we issue")
    mllp_tls_cert: Path | None = Field(None, description="PEM certificate (chain) of the MLLP TLS listener")
    mllp_tls_key: Path | None = Field(None, description="PEM private key of the MLLP TLS certificate")
    mllp_tls_client_ca: Path | None = Field(None, description="PEM CA bundle that signs MLLP client certs")
    mllp_tls_require_client_cert: bool = Field(False, description="MLLP mTLS: refuse clients without a cert")
    mllp_process: bool = Field(True, description="embedded mode: MLLP listener in its own process (ACK latency)")
    mllp_plain: bool = Field(False, description="allow plain (non-TLS) MLLP on a non-loopback address")
    outcomes_min_follow_up_days: int = Field(
        90, ge=1, le=3650, description="Défi Santé outcomes: clients followed less are not compared")
    subscription_allow_private: bool = Field(
        False, description="allow subscriber endpoints on loopback, link-local or private addresses")

    @property
    def embedded(self) -> bool:
        return not self.kafka_bootstrap

    def topic(self, name: str) -> str:
        """Full topic name: prefix + name (e.g. ``pivot.hl7v2.in``)."""
        return f"{self.kafka_topic_prefix}{name}"


def load_settings(**overrides: object) -> Settings:
    """Build Settings; a bad value raises ConfigError naming the ``PIVOT_*`` variable."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "PIVOT_" + str(first["loc"][0]).upper() if first["loc"] else "PIVOT_*"
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(settings.default_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("invalid setting PIVOT_DEFAULT_TIMEZONE: unknown time zone") from None
    if settings.state_url and not settings.state_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("invalid setting PIVOT_STATE_URL: a postgresql://user@host:port/database URL, or empty")
    return settings

"""Who the clients are: registered clients (clients file) and static tokens (secrets file).

Clients file (``PIVOT_AUTH_CLIENTS_FILE``), JSON::

    {"clients": [{"client_id": "hsa-er", "scopes": ["system/hl7v2.c"],
                  "facilities": ["CSSS-SOMMETS-HSA"], "authorities": ["HSA"], "messages": ["adt"],
                  "jwks": {"keys": [<public JWK>, …]},          # SMART client assertion keys
                  "certificate_cns": ["hsa-er.sommets.example"]},  # MLLP client certificates
                 {"client_id": "ehr-gmf-12", "scopes": ["system/*.rs"],
                  "organization": "clinic-gmf-12"}]}            # reads limited to its clients

Secrets file (``PIVOT_AUTH_TOKENS_FILE``, keep it 0600), JSON, keyed by the SHA-256 (hex) of the
token, so the file never holds a usable token::

    {"<sha256 hex>": {"client_id": "pharm-12", "scopes": ["system/hl7v2.c"],
                      "facilities": ["PHX12"], "messages": ["pharmacy"]}}

``facilities`` are MSH-4 namespace ids the client may send for; ``messages`` are message kinds
(``adt``, ``pharmacy``, or a message code such as ``ORU``); ``"*"`` allows any. A client without
``facilities`` may send nothing. ``authorities`` adds assigning authorities (CX-4) whose patient and
visit identifiers the client may write, beyond those of its facilities (gateway/security/authorities.py).

``organization`` (an Organization id) makes the client organisation-scoped: on top of its scopes,
every FHIR read, vread, history, search and ``_include`` about a client (a Patient, or a resource
whose ``patient``/``subject`` is one) passes the care-team and consent rule of the subscriptions
(``gateway/fhirstore/careteam.py``): that Organization must be in one of the client's active
CareTeams — or the entry says ``"program_wide": true`` — and no active Consent of the client may
deny it. What it may not see is a 404, searches list only what it may see
(``gateway/http/visibility.py``); the same boundary (``gateway/security/boundary.py``) bounds its
writes, the Défi Santé operations, the console and its Subscriptions (owner and program-wide flag
are set from this entry). A client without ``organization`` (hospital IT, the gateway's own
system clients) reads whatever its scopes allow. The entry that authenticated the request decides:
a static token's own secrets-file entry; for a SMART token of ours, or an external issuer's JWT,
the clients-file entry of its client id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.security.scopes import Scope, parse_scopes


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client: its scopes, sender allow-list, assertion keys and certificate names."""

    client_id: str
    scopes: tuple[str, ...] = ()
    facilities: frozenset[str] = frozenset()
    messages: frozenset[str] = frozenset()
    jwks: tuple[dict[str, Any], ...] = ()
    certificate_cns: tuple[str, ...] = ()
    organization: str = ""  # an Organization id: reads limited by the care-team and consent rule
    program_wide: bool = False  # with ``organization``: no care-team membership needed (consent still applies)
    authorities: frozenset[str] = frozenset()  # assigning authorities it may write, beyond its facilities'


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    client_id: str
    scopes: tuple[Scope, ...]
    scope_text: str = ""
    method: str = "none"  # none, token, smart, jwt
    issuer: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    organization: str = ""  # of the client's registration (see the module docstring)
    program_wide: bool = False


ANONYMOUS_ID = "anonymous"
_ORGANIZATION_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _strings(value: Any, where: str, setting: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"invalid setting {setting}: {where} must be a list of strings")
    return tuple(value)


def _organization(item: dict[str, Any], cid: str, setting: str) -> tuple[str, bool]:
    """``organization`` (an Organization id) and ``program_wide`` of one entry."""
    org, wide = item.get("organization", ""), item.get("program_wide", False)
    if not isinstance(org, str) or (org and _ORGANIZATION_ID.fullmatch(org) is None):
        raise ConfigError(f"invalid setting {setting}: organization of {cid!r} must be an Organization id")
    if not isinstance(wide, bool):
        raise ConfigError(f"invalid setting {setting}: program_wide of {cid!r} must be true or false")
    if wide and not org:
        raise ConfigError(f"invalid setting {setting}: program_wide of {cid!r} needs an organization")
    return org, wide


def _client(item: Any, setting: str, client_id: str | None = None) -> Client:
    if not isinstance(item, dict):
        raise ConfigError(f"invalid setting {setting}: each client must be a JSON object")
    cid = client_id if client_id is not None else item.get("client_id")
    if not isinstance(cid, str) or not cid:
        raise ConfigError(f"invalid setting {setting}: a client has no client_id")
    jwks = item.get("jwks", {"keys": []})
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ConfigError(f"invalid setting {setting}: jwks of client {cid!r} must be {{\"keys\": [...]}}")
    if any("d" in k for k in keys):
        raise ConfigError(f"invalid setting {setting}: client {cid!r} has a private key in its jwks")
    org, wide = _organization(item, cid, setting)
    return Client(cid, _strings(item.get("scopes"), f"scopes of {cid!r}", setting),
                  frozenset(_strings(item.get("facilities"), f"facilities of {cid!r}", setting)),
                  frozenset(m.lower() for m in _strings(item.get("messages"), f"messages of {cid!r}", setting)),
                  tuple(keys), _strings(item.get("certificate_cns"), f"certificate_cns of {cid!r}", setting),
                  org, wide,
                  frozenset(_strings(item.get("authorities"), f"authorities of {cid!r}", setting)))


def _read_json(path: Path, setting: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"invalid setting {setting}: cannot read {path}") from None
    except ValueError:
        raise ConfigError(f"invalid setting {setting}: {path} is not valid JSON") from None


class ClientRegistry:
    """Registered clients and static tokens, looked up by client id, token or certificate CN."""

    def __init__(self, clients: list[Client] | None = None, tokens: dict[str, Client] | None = None) -> None:
        self.clients: dict[str, Client] = {c.client_id: c for c in clients or []}
        self.tokens: dict[str, Client] = dict(tokens or {})
        self._by_cn = {cn: c.client_id for c in self.clients.values() for cn in c.certificate_cns}

    @classmethod
    def load(cls, clients_file: Path | None, tokens_file: Path | None) -> ClientRegistry:
        """Read both files (either may be None); ConfigError names the setting at fault."""
        clients: list[Client] = []
        if clients_file is not None:
            data = _read_json(clients_file, "PIVOT_AUTH_CLIENTS_FILE")
            items = data.get("clients") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ConfigError("invalid setting PIVOT_AUTH_CLIENTS_FILE: expected {\"clients\": [...]}")
            clients = [_client(item, "PIVOT_AUTH_CLIENTS_FILE") for item in items]
            ids = [c.client_id for c in clients]
            if len(set(ids)) != len(ids):
                raise ConfigError("invalid setting PIVOT_AUTH_CLIENTS_FILE: a client_id appears twice")
        tokens: dict[str, Client] = {}
        if tokens_file is not None:
            data = _read_json(tokens_file, "PIVOT_AUTH_TOKENS_FILE")
            if not isinstance(data, dict):
                raise ConfigError("invalid setting PIVOT_AUTH_TOKENS_FILE: expected an object keyed by sha256")
            for digest, item in data.items():
                if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest.lower()):
                    raise ConfigError("invalid setting PIVOT_AUTH_TOKENS_FILE: keys must be sha256 hex digests")
                tokens[digest.lower()] = _client(item, "PIVOT_AUTH_TOKENS_FILE")
        return cls(clients, tokens)

    def get(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def by_token(self, token: str) -> Client | None:
        """The client of a static token (looked up by its SHA-256 digest: no timing on the token)."""
        return self.tokens.get(token_digest(token))

    def by_certificate_cn(self, cn: str) -> str:
        """The client id mapped to a certificate CN; empty when unknown."""
        return self._by_cn.get(cn, "")

    def sender(self, client_id: str) -> Client | None:
        """The allow-list entry of a sender: a registered client, else a static token's client."""
        found = self.clients.get(client_id)
        if found is not None:
            return found
        return next((c for c in self.tokens.values() if c.client_id == client_id), None)


def token_digest(token: str) -> str:
    """The key of ``token`` in the secrets file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def principal_of(client: Client, method: str) -> Principal:
    """The principal of a client authenticated by a static token (all its registered scopes)."""
    return Principal(client.client_id, parse_scopes(client.scopes), " ".join(client.scopes), method,
                     organization=client.organization, program_wide=client.program_wide)

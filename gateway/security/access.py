"""What an HTTP request needs: open, or a list of (resource, SMART letters), and how it is audited.

    /healthz, /auth/token, /auth/jwks, [/fhir]/.well-known/smart-configuration, /fhir/metadata   open
    GET /metrics                                   metrics.r
    POST /hl7v2                                    hl7v2.c
    …$defi-sante-enroll, …$defi-sante-disenroll    defi-sante.c (granted by defi-sante.write)
    …$defi-sante-candidates, …$defi-sante-outcomes, GET /fhir/Group/defi-sante
                                                   defi-sante.r (the program's views; Patient.rs is not enough)
    other paths naming defi-sante / defisante      defi-sante.r (GET) or .c (other methods)
    GET /fhir/T, /fhir/T/_search, /fhir/T/_history T.s        POST /fhir/T/_search   T.s
    GET /fhir/T/id[/_history[/vid]]                T.r        POST /fhir/T           T.c
    PUT/PATCH /fhir/T/id, PUT /fhir/T?criteria     T.u        DELETE /fhir/T/id      T.d
    POST /fhir (transaction/batch)                 one access per entry (read from the body)
    /docs, /openapi.json, /redoc                   any valid token
    anything else                                  *.cruds (deny by default)

Everything under ``/fhir`` except the metadata, and every Défi Santé path, is audited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

OPEN_PATHS = frozenset({"/healthz", "/auth/token", "/auth/jwks", "/.well-known/smart-configuration",
                        "/fhir/.well-known/smart-configuration", "/fhir/metadata"})
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
DEFI_SANTE_OPERATIONS = ("$defi-sante-enroll", "$defi-sante-disenroll")
DEFI_SANTE_VIEWS = ("$defi-sante-candidates", "$defi-sante-outcomes")
PROGRAM_GROUP = "/fhir/Group/defi-sante"
FULL = "cruds"


@dataclass(frozen=True, slots=True)
class Access:
    """One thing a request does: every SMART letter in ``letters`` is needed on ``rtype``."""

    rtype: str
    letters: str


@dataclass(frozen=True, slots=True)
class AuditKind:
    """How a request appears in its AuditEvent (IHE BALP): restful interaction, action, target."""

    subtype: str  # read, vread, search-type, search-system, history-*, create, update, delete, …
    action: str  # C, R, U, D or E (FHIR audit-event-action)
    rtype: str = ""
    rid: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """The requirement of one request (``bundle``: the accesses come from the request body)."""

    accesses: tuple[Access, ...] = ()
    open: bool = False
    bundle: bool = False
    audit: AuditKind | None = None


def classify(method: str, path: str) -> Route:
    """The requirement of ``method path`` (path without the query string)."""
    method = method.upper()
    path = "/" + path.strip("/") if path not in ("", "/") else "/"
    if path in OPEN_PATHS or (method == "HEAD" and path == "/healthz"):
        return Route(open=True)
    if path in DOC_PATHS:
        return Route()
    if any(op in path for op in DEFI_SANTE_OPERATIONS):
        op = next(op for op in DEFI_SANTE_OPERATIONS if op in path)
        return Route((Access("defi-sante", "c"),), audit=AuditKind("operation", "E", rid=op))
    if any(op in path for op in DEFI_SANTE_VIEWS):
        op = next(op for op in DEFI_SANTE_VIEWS if op in path)
        letter = "r" if method in ("GET", "HEAD") else "c"
        return Route((Access("defi-sante", letter),), audit=AuditKind("operation", "E", rid=op))
    if path == PROGRAM_GROUP:
        letter = "r" if method in ("GET", "HEAD") else "c"
        return Route((Access("defi-sante", letter),), audit=AuditKind("read", "R", "Group", "defi-sante"))
    if path == "/metrics":
        return Route((Access("metrics", "r"),))
    if path == "/hl7v2":
        return Route((Access("hl7v2", "c"),))
    if path == "/console" or path.startswith("/console/"):
        return _console(method, path)
    if path == "/fhir" or path.startswith("/fhir/"):
        return _fhir(method, path[len("/fhir"):].strip("/").split("/") if path != "/fhir" else [])
    if "defi-sante" in path or "defisante" in path:
        letter = "r" if method in ("GET", "HEAD") else "c"
        return Route((Access("defi-sante", letter),), audit=AuditKind("operation", "R" if letter == "r" else "E"))
    return Route((Access("*", FULL),))


def _console(method: str, path: str) -> Route:
    """The console's entries (table: gateway/console/access.py); deny by default."""
    from gateway.console.access import console_access  # lazy: the console package imports much of the gateway

    need = console_access(method, path)
    if need is None:
        return Route((Access("*", FULL),))
    if need.open:
        return Route(open=True)
    audit = AuditKind("operation", "R", "Patient" if need.patient else "", need.patient) if need.audited else None
    return Route((Access(need.resource, need.letters),), audit=audit)


def _fhir(method: str, parts: list[str]) -> Route:
    reading = method in ("GET", "HEAD")
    if not parts:
        if method == "POST":
            return Route(bundle=True, audit=AuditKind("transaction", "E"))
        return Route((Access("*", "s" if reading else FULL),), audit=AuditKind("search-system", "E"))
    rtype = parts[0]
    if rtype == "_history" or rtype.startswith(("$", "_")):
        return Route((Access("*", "s" if reading else FULL),), audit=AuditKind("search-system", "E"))
    access, kind = _fhir_type(method, rtype, parts[1:])
    return Route((access,), audit=kind)


def _fhir_type(method: str, rtype: str, rest: list[str]) -> tuple[Access, AuditKind]:
    """Access and audit kind of a request under ``/fhir/<rtype>``."""
    reading = method in ("GET", "HEAD")
    if not rest:
        letter = {"GET": "s", "HEAD": "s", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, FULL)
        sub = {"s": "search-type", "c": "create", "u": "update", "d": "delete"}.get(letter, "operation")
        action = {"s": "E", "c": "C", "u": "U", "d": "D"}.get(letter, "E")
        return Access(rtype, letter), AuditKind(sub, action, rtype)
    head = rest[0]
    if head == "_search":
        return Access(rtype, "s"), AuditKind("search-type", "E", rtype)
    if head == "_history":
        return Access(rtype, "s" if reading else FULL), AuditKind("history-type", "E", rtype)
    if head.startswith("$"):
        return Access(rtype, "r" if reading else FULL), AuditKind("operation", "E", rtype)
    rid = head
    if len(rest) == 1:
        letter = {"GET": "r", "HEAD": "r", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, FULL)
        sub = {"r": "read", "u": "update", "d": "delete"}.get(letter, "operation")
        action = {"r": "R", "u": "U", "d": "D"}.get(letter, "E")
        return Access(rtype, letter), AuditKind(sub, action, rtype, rid)
    if rest[1] == "_history":
        sub = "vread" if len(rest) >= 3 else "history-instance"
        return Access(rtype, "r" if reading else FULL), AuditKind(sub, "R", rtype, rid)
    if rest[1].startswith("$"):
        return Access(rtype, "r" if reading else FULL), AuditKind("operation", "E", rtype, rid)
    return Access(rtype, FULL), AuditKind("operation", "E", rtype, rid)


def bundle_accesses(body: bytes) -> tuple[Access, ...]:
    """One access per entry of a transaction/batch Bundle; an unreadable body needs ``*.cruds``."""
    try:
        bundle: Any = json.loads(body)
    except ValueError:
        return (Access("*", FULL),)
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    if not isinstance(entries, list):
        return (Access("*", FULL),)
    accesses: list[Access] = []
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("url"), str):
            return (Access("*", FULL),)
        path = _entry_path(request["url"])
        if path is None:
            return (Access("*", FULL),)
        route = classify(str(request.get("method", "")), "/fhir/" + path)
        accesses.extend(route.accesses if route.accesses and not route.bundle else (Access("*", FULL),))
    return tuple(dict.fromkeys(accesses))


def _entry_path(url: str) -> str | None:
    """A bundle entry's URL relative to the FHIR base (``Patient/1``), query removed."""
    parts = urlsplit(url)
    path = parts.path
    if parts.scheme or parts.netloc:
        marker = path.find("/fhir/")
        if marker < 0:
            return None
        path = path[marker + len("/fhir/"):]
    return path.strip("/") or None

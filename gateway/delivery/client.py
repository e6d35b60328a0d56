"""HTTP client of the external FHIR R4 server (httpx): transactions, retries, errors.

    Exception               raised when                                  the sink does
    FhirRefused(DeliverError) 4xx other than 401/403/405/406/408/415/429   dead letter (HTTP status + issue codes)
    DeliveryStopped(PublishError) the worker stops while waiting to retry record not committed
    (everything else: connection errors, timeouts, 5xx, 408, 429, auth/server set-up problems) is
    retried inside the client, with full-jitter exponential backoff capped at PIVOT_FHIR_RETRY_MAX_S
    (``Retry-After`` honoured), for as long as the worker runs.

401/403/405/406/415 are not the message's fault (credentials, scopes, wrong base URL or a server
without transactions): they are retried like an outage and logged as errors, so nothing lands in
the dead letters while an operator fixes the configuration.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from gateway.delivery.auth import AuthFailed
from gateway.delivery.bundle import JSON
from gateway.delivery.delta import Plan, prune, read_request
from gateway.delivery.retry import next_delay_s, retry_after_s
from gateway.errors import DeliverError, PublishError

log = logging.getLogger("pivot.delivery")
T = TypeVar("T")
FHIR_JSON = "application/fhir+json"
_TRANSIENT = {408, 429}
_BLOCKED = {401, 403, 405, 406, 415}  # set-up problems: retried, logged as errors
_CONFLICT = {409, 412}  # concurrent writer (or several matches): re-planned a few times, then refused
_MAX_CONFLICTS = 3


class FhirRefused(DeliverError):
    """The server refused the request; ``status`` and ``outcome`` (its OperationOutcome) say why."""

    def __init__(self, status: int, outcome: JSON | None) -> None:
        self.status = status
        self.outcome = outcome or {}
        self.issue_codes = [str(i.get("code", "")) for i in self.outcome.get("issue") or [] if isinstance(i, dict)]
        super().__init__(f"HTTP {status}: {outcome_summary(self.outcome)}")


class DeliveryStopped(PublishError):
    """The worker was stopped before the bundle could be delivered (it will be, after a restart)."""


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, *, severe: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.severe = severe


def outcome_summary(outcome: JSON) -> str:
    """Issue codes and element paths of an OperationOutcome; never diagnostics (they may quote values)."""
    parts = []
    for item in outcome.get("issue") or []:
        if not isinstance(item, dict):
            continue
        text = f"{item.get('severity', '?')} {item.get('code', '?')}"
        paths = [p for p in (item.get("expression") or item.get("location") or []) if isinstance(p, str)]
        if paths:
            text += " at " + ", ".join(paths[:5])
        parts.append(text)
    return "; ".join(parts[:10]) or "no OperationOutcome"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Outcome of one delivered bundle: entries written (created/updated), skipped as unchanged, and
    skipped as stale (the server holds a later resolution's copy: delta.py)."""

    created: int
    updated: int
    unchanged: int
    attempts: int
    stale: int = 0


class FhirClient:
    """One FHIR server. ``deliver`` = pre-read, prune unchanged entries, POST the transaction."""

    def __init__(self, base_url: str, *, auth: httpx.Auth | None = None, verify: ssl.SSLContext | bool = True,
                 timeout_s: float = 30.0, retry_max_s: float = 15.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_max_s = retry_max_s
        self.retries = 0  # attempts that failed transiently (metrics)
        self._http = httpx.Client(auth=auth, verify=verify, transport=transport, follow_redirects=False,
                                  timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                                  headers={"Accept": FHIR_JSON, "User-Agent": "pivot-gateway"})

    def close(self) -> None:
        self._http.close()

    # -- public operations (retried) ---------------------------------------------------------------
    def transaction(self, bundle: JSON, stop: threading.Event | None = None) -> JSON:
        """POST a transaction (or batch) Bundle; the response Bundle (retried until success or stop)."""
        return self._retrying(lambda: self._post(bundle), stop)

    def deliver(self, bundle: JSON, stop: threading.Event | None = None) -> Delivery:
        """Deliver one message's transaction so that a replay writes nothing (see delta.py)."""
        state = {"attempts": 0, "conflicts": 0}

        def attempt() -> Delivery:
            state["attempts"] += 1
            plan = self._plan(bundle)
            if plan.bundle is None:
                return Delivery(0, 0, plan.unchanged, state["attempts"], plan.stale)
            try:
                reply = self._post(plan.bundle, prefer="return=minimal")
            except FhirRefused as exc:
                if exc.status in _CONFLICT and state["conflicts"] < _MAX_CONFLICTS:
                    state["conflicts"] += 1
                    raise _Transient(f"HTTP {exc.status} (conflict), re-planning") from None
                raise
            created, updated = _count(reply)
            return Delivery(created, updated, plan.unchanged, state["attempts"], plan.stale)

        return self._retrying(attempt, stop)

    def capabilities_problems(self) -> list[str]:
        """What /metadata says Pivot cannot rely on (empty when fine). One attempt, never raises."""
        try:
            resp = self._http.get(f"{self.base_url}/metadata")
            cap = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AuthFailed):
            return ["metadata unreachable (checked again by every delivery)"]
        if not isinstance(cap, dict) or cap.get("resourceType") != "CapabilityStatement":
            return [f"GET /metadata answered HTTP {resp.status_code} without a CapabilityStatement"]
        problems = []
        if not str(cap.get("fhirVersion", "")).startswith("4.0"):
            problems.append(f"fhirVersion is {cap.get('fhirVersion')!r}, not R4 (4.0.x)")
        interactions = {str(i.get("code")) for rest in cap.get("rest") or [] for i in rest.get("interaction") or []}
        if "transaction" not in interactions:
            problems.append("CapabilityStatement does not declare the transaction interaction")
        return problems

    # -- one attempt --------------------------------------------------------------------------------
    def _plan(self, bundle: JSON) -> Plan:
        try:
            return prune(bundle, self._post(read_request(bundle)))
        except FhirRefused as exc:  # pruning is an optimisation: write everything, the server decides
            log.warning("FHIR server refused the pre-read batch (HTTP %d): writing every entry", exc.status)
            return Plan(bundle, 0, [])

    def _post(self, bundle: JSON, prefer: str = "") -> JSON:
        headers = {"Content-Type": f"{FHIR_JSON}; charset=utf-8"}
        if prefer:
            headers["Prefer"] = prefer
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        try:
            resp = self._http.post(self.base_url, content=body, headers=headers)
        except AuthFailed as exc:
            transient = exc.status == 0 or exc.status >= 500 or exc.status in _TRANSIENT
            raise _Transient(str(exc), exc.retry_after, severe=not transient) from None
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__} talking to the FHIR server") from None
        status = resp.status_code
        if status >= 500 or status in _TRANSIENT:
            raise _Transient(f"HTTP {status}", retry_after_s(resp.headers.get("Retry-After")))
        if status in _BLOCKED:
            raise _Transient(f"HTTP {status} ({outcome_summary(_body(resp))})",
                             retry_after_s(resp.headers.get("Retry-After")), severe=True)
        if status >= 400:
            raise FhirRefused(status, _body(resp))
        if status >= 300:
            raise _Transient(f"HTTP {status} (redirect: check PIVOT_FHIR_BASE_URL)", severe=True)
        reply = _body(resp)
        if reply.get("resourceType") != "Bundle":
            raise _Transient(f"HTTP {status} without a response Bundle", severe=True)
        return reply

    def _retrying(self, action: Callable[[], T], stop: threading.Event | None) -> T:
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                raise DeliveryStopped("delivery stopped before the bundle was delivered")
            try:
                return action()
            except _Transient as exc:
                delay = next_delay_s(attempt, self.retry_max_s, exc.retry_after)
                attempt += 1
                self.retries += 1
                level = logging.ERROR if exc.severe else logging.WARNING
                log.log(level, "FHIR delivery: %s; retry %d in %.1fs", exc.reason, attempt, delay)
                if stop is not None:
                    if stop.wait(delay):
                        raise DeliveryStopped("delivery stopped while waiting to retry") from None
                else:
                    threading.Event().wait(delay)


def _body(resp: httpx.Response) -> JSON:
    try:
        data: Any = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _count(reply: JSON) -> tuple[int, int]:
    created = updated = 0
    for entry in reply.get("entry") or []:
        status = str((entry.get("response") or {}).get("status", "")).split(" ", 1)[0]
        if status == "201":
            created += 1
        elif status.startswith("2"):
            updated += 1
    return created, updated

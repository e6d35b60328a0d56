"""Write-only elements: kept in the store and used by the gateway, never returned by the FHIR API.

``Subscription.channel.header`` lines carry the subscriber's credentials (``Authorization: Bearer
…``). Every FHIR API answer — read, vread, search (with ``_include``), history, the body returned
by a create or an update, transaction and batch responses — shows each line as ``Name: ***``
(:func:`mask_secrets`). The subscription engine reads the store itself and sends the real values.

A client that reads a Subscription and writes it back (to set ``status: off``, say) sends the
masked lines: on a write, a line whose value is exactly ``***`` keeps the stored value of the
header of that name (the n-th masked line of a name takes the n-th stored line of that name), so a
read-modify-write never replaces a secret with asterisks; any other value replaces it. A masked
line the stored version has no header for is refused (422) (:func:`keep_secrets`).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import StoreError

JSON = dict[str, Any]
MASK = "***"


def _headers(resource: JSON) -> list[Any] | None:
    channel = resource.get("channel")
    headers = channel.get("header") if isinstance(channel, dict) else None
    return headers if isinstance(headers, list) and headers else None


def _with_headers(resource: JSON, headers: list[Any]) -> JSON:
    return {**resource, "channel": {**resource["channel"], "header": headers}}


def _name(line: str) -> str:
    return line.partition(":")[0].strip()


def _masked_line(line: Any) -> str:
    if isinstance(line, str) and ":" in line:
        return f"{_name(line)}: {MASK}"
    return MASK


def mask_secrets(body: JSON | None) -> JSON | None:
    """``body`` with every Subscription's header values masked (itself, or in a Bundle's entries);
    the same object when there is nothing to mask."""
    if not isinstance(body, dict):
        return body
    rtype = body.get("resourceType")
    if rtype == "Subscription":
        headers = _headers(body)
        return body if headers is None else _with_headers(body, [_masked_line(h) for h in headers])
    if rtype != "Bundle" or not isinstance(body.get("entry"), list):
        return body
    entries: list[Any] = []
    changed = False
    for entry in body["entry"]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        masked = mask_secrets(resource) if isinstance(resource, dict) else resource
        if masked is not resource:
            entry = {**entry, "resource": masked}
            changed = True
        entries.append(entry)
    return {**body, "entry": entries} if changed else body


def is_masked(line: Any) -> bool:
    return isinstance(line, str) and line.partition(":")[2].strip() == MASK


def has_masked(resource: JSON) -> bool:
    """Does a Subscription to write carry masked header lines (that :func:`keep_secrets` restores)?"""
    headers = _headers(resource) if resource.get("resourceType") == "Subscription" else None
    return headers is not None and any(is_masked(h) for h in headers)


def keep_secrets(resource: JSON, stored: JSON | None) -> JSON:
    """``resource`` with each masked header line replaced by the stored line of the same name."""
    if not has_masked(resource):
        return resource
    pool: dict[str, list[str]] = {}
    for line in (_headers(stored) if stored is not None else None) or []:
        if isinstance(line, str) and not is_masked(line):
            pool.setdefault(_name(line).lower(), []).append(line)
    out: list[Any] = []
    for n, line in enumerate(_headers(resource) or []):
        if not is_masked(line):
            out.append(line)
            continue
        kept = pool.get(_name(line).lower())
        if not kept:
            raise StoreError(f"Subscription.channel.header[{n}]: '{MASK}' keeps a stored value, and the stored "
                             "Subscription has no header of that name", status=422, issue_code="invalid")
        out.append(kept.pop(0))
    return _with_headers(resource, out)

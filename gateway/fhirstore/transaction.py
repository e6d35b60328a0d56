"""``POST /fhir`` with a Bundle: ``transaction`` (all or nothing) or ``batch`` (entry by entry).

Transaction: every entry is checked, validated and passed to the store's write checks first; then,
in ONE SQLite transaction, ids are resolved (server ids for POST, conditional look-ups), the
``fullUrl`` of each written entry (``urn:uuid:…`` or absolute) is mapped to ``Type/id`` and every
reference in the Bundle using it is rewritten, conditional references (``Patient?identifier=s|v``)
are resolved (exactly one match, else 412), and entries run in the FHIR order DELETE, POST, PUT,
GET. The first failure rolls everything back and is answered as that entry's status and
OperationOutcome (the message names the entry index). A reference to a ``urn:uuid`` that no entry
defines is a 400.

Batch: each entry is checked and run alone (a savepoint each); the batch-response carries a status
per entry, with an OperationOutcome for each failure. References are not rewritten between batch
entries (FHIR forbids dependencies inside a batch); an unresolved ``urn:uuid`` reference is a 400
for that entry.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from gateway.errors import StoreError
from gateway.fhirstore.bundles import (
    JSON,
    operation_outcome,
    response_bundle,
    searchset,
    status_text,
)
from gateway.fhirstore.dates import instant_text
from gateway.fhirstore.extract import references_in
from gateway.fhirstore.interactions import (
    Interaction,
    Reach,
    Result,
    bad,
    check,
    execute,
    from_entry,
    parse_url,
    resolve,
)
from gateway.fhirstore.store import FhirStore
from gateway.fhirstore.writer import Writer

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}
MAX_ENTRIES = 10_000


class WriteGuard(Protocol):
    """Who may write what (gateway/security/boundary.py): asked for every entry, as for a REST write."""

    def prepare(self, inter: Interaction) -> None:
        """Before the write lock (may rewrite ``inter.resource``; StoreError refuses)."""

    def check(self, writer: Writer, inter: Interaction) -> None:
        """Inside the transaction, the target id resolved (StoreError refuses)."""

    def reach(self, writer: Writer, rtype: str, ids: list[str]) -> list[str]:
        """The ids among ``ids`` the caller may know: conditional look-ups find only those."""


def process_bundle(store: FhirStore, bundle: Any, base: str, guard: WriteGuard | None = None) -> JSON:
    """Run a transaction or batch Bundle; returns the response Bundle (or raises StoreError).

    ``guard``: the caller's write rules, asked for each entry (none: the store's own checks only)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad("the base accepts a Bundle of type transaction or batch", 400, "structure")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise bad("Bundle.entry must be a list", 400, "structure")
    if len(entries) > MAX_ENTRIES:
        raise bad(f"at most {MAX_ENTRIES} entries per Bundle", 413, "too-costly")
    if bundle.get("type") == "transaction":
        return _transaction(store, entries, base, guard)
    if bundle.get("type") == "batch":
        return _batch(store, entries, base, guard)
    raise bad("the base accepts a Bundle of type transaction or batch", 400, "not-supported")


def _at(index: int, exc: StoreError) -> StoreError:
    return StoreError(f"entry {index}: {exc.message}", status=exc.status, issue_code=exc.issue_code)


def _transaction(store: FhirStore, entries: list[Any], base: str, guard: WriteGuard | None) -> JSON:
    items: list[Interaction] = []
    for n, entry in enumerate(entries):
        try:
            inter = from_entry(entry, base)
            check(inter)
            if guard is not None:
                guard.prepare(inter)
            store.check_write(inter.resource)
        except StoreError as exc:
            raise _at(n, exc) from None
        items.append(inter)
    results: list[Result | None] = [None] * len(items)
    with store.writing() as writer:
        reach = guard.reach if guard is not None else None
        for n, inter in enumerate(items):
            try:
                resolve(writer, inter, reach)
            except StoreError as exc:
                raise _at(n, exc) from None
        _link_full_urls(writer, items, base, reach)
        for n, inter in enumerate(items):
            try:
                if guard is not None:
                    guard.check(writer, inter)
            except StoreError as exc:
                raise _at(n, exc) from None
        for n in sorted(range(len(items)), key=lambda i: _ORDER[items[i].method]):
            try:
                results[n] = execute(writer, items[n])
            except StoreError as exc:
                raise _at(n, exc) from None
    return response_bundle("transaction-response",
                           [_response_entry(base, r) for r in results if r is not None])


def _link_full_urls(writer: Writer, items: list[Interaction], base: str, reach: Reach | None = None) -> None:
    """Map each written entry's fullUrl to Type/id and rewrite the references that use it."""
    mapping: dict[str, str] = {}
    targets: set[tuple[str, str]] = set()
    for n, inter in enumerate(items):
        if inter.method == "GET" or inter.target is None:
            continue
        if (inter.rtype, inter.target) in targets:
            raise _at(n, bad("two entries write the same resource"))
        targets.add((inter.rtype, inter.target))
        if inter.full_url:
            if inter.full_url in mapping:
                raise _at(n, bad("two entries have the same fullUrl"))
            mapping[inter.full_url] = f"{inter.rtype}/{inter.target}"
    for n, inter in enumerate(items):
        if inter.resource is None:
            continue
        try:
            inter.resource = _rewrite(writer, inter.resource, mapping, base, reach)
        except StoreError as exc:
            raise _at(n, exc) from None


def _rewrite(writer: Writer | None, resource: JSON, mapping: dict[str, str], base: str,
             reach: Reach | None = None) -> JSON:
    refs = list(references_in(resource))
    if not any(r["reference"] in mapping or r["reference"].startswith("urn:") or "?" in r["reference"]
               for r in refs):
        return resource
    resource = copy.deepcopy(resource)
    for ref in references_in(resource):
        value = ref["reference"]
        if value in mapping:
            ref["reference"] = mapping[value]
        elif value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
            raise bad("reference to a urn that no entry of the Bundle defines")
        elif "?" in value and writer is not None:
            rtype, _rid, params = parse_url(value, base)
            matches = writer.match_ids(rtype, params or [])
            if reach is not None and matches:  # only what the caller may know (a 412 tells nothing else)
                matches = reach(writer, rtype, matches)
            if len(matches) != 1:
                raise bad("a conditional reference must match exactly one resource", 412, "not-found")
            ref["reference"] = f"{rtype}/{matches[0]}"
        elif "?" in value:
            raise bad("conditional references are resolved in transactions only")
    return resource


def _batch(store: FhirStore, entries: list[Any], base: str, guard: WriteGuard | None) -> JSON:
    prepared: list[Interaction | StoreError] = []
    for entry in entries:
        try:
            inter = from_entry(entry, base)
            check(inter)
            if guard is not None:
                guard.prepare(inter)
            store.check_write(inter.resource)
            if inter.resource is not None:
                inter.resource = _rewrite(None, inter.resource, {}, base)
            prepared.append(inter)
        except StoreError as exc:
            prepared.append(exc)
    out: list[JSON] = []
    with store.writing() as writer:
        for item in prepared:
            if isinstance(item, StoreError):
                out.append(_error_entry(item))
                continue
            try:
                with writer.savepoint():
                    resolve(writer, item, guard.reach if guard is not None else None)
                    if guard is not None:
                        guard.check(writer, item)
                    out.append(_response_entry(base, execute(writer, item)))
            except StoreError as exc:
                out.append(_error_entry(exc))
    return response_bundle("batch-response", out)


def _error_entry(exc: StoreError) -> JSON:
    return {"response": {"status": status_text(exc.status),
                         "outcome": operation_outcome("error", exc.issue_code, exc.message)}}


def _response_entry(base: str, result: Result) -> JSON:
    response: JSON = {"status": status_text(result.status)}
    entry: JSON = {"response": response}
    if result.outcome is not None:
        o = result.outcome
        entry["fullUrl"] = f"{base}/{o.rtype}/{o.id}"
        if o.resource is not None:
            response["location"] = f"{o.rtype}/{o.id}/_history/{o.version}"
        response["etag"] = o.etag
        response["lastModified"] = o.last_updated
    elif result.entry is not None:
        e = result.entry
        entry["fullUrl"] = f"{base}/{e.rtype}/{e.id}"
        entry["resource"] = e.resource
        response["etag"] = f'W/"{e.version}"'
        response["lastModified"] = instant_text(e.lu_ms)
    elif result.page is not None:
        entry["resource"] = searchset(base, result.query, result.page)
    return entry

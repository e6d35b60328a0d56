"""What an organisation-scoped API client may read: the store seen through the care-team rule.

A registered client with an ``organization`` (``gateway/security/clients.py``) reads only the
resources that :class:`~gateway.fhirstore.careteam.CareTeamRule` lets its
:class:`~gateway.fhirstore.careteam.Audience` learn about — the rule the subscriptions use, not a
copy of it. The guard (``gateway/security/middleware.py``) puts that audience in the request state;
a request without one (no organisation, PIVOT_AUTH=none) reads the store directly, as before.

- read / vread of a resource the client may not see → **404**, the very OperationOutcome of an
  unknown id, never 403: a 403 would confirm that the client's record exists here (and so that
  they were seen by this health network), which is itself what the consent protects. A deleted
  resource (410) is a 404 too unless some version of it is visible; an instance ``_history`` is a
  404 unless some version is visible, then lists only the visible versions.
- search and type ``_history`` → only the visible entries, and ``_include``d resources only when
  a returned entry references them and they are visible themselves. Pages are refilled: batches
  are read from the store until ``_count`` visible entries (plus one, to know there is a next
  page) are found or the results end, and the next/previous links are anchored on returned
  entries, so a page token never carries the key of a withheld resource and walking the next
  links visits every visible match once. Such results carry **no** ``total`` (a count over the
  unfiltered matches would reveal how many withheld resources exist; an exact count would mean
  reading every match): ``_summary=count`` answers a Bundle without a total. Deletions in a
  history have no content to judge and are left out.
- types never about a client (Organization, Practitioner, Location…) pass unchanged, totals
  included; a Subscription is read like a resource about a client, visible to its owner only
  (``subscription-owner``: its criteria and events are about that organisation's clients).
- a batch or transaction with a read (GET entry) is a 403 for such a client: Bundle reads are not
  filtered, the REST interactions above are.
- for every caller (organisation-scoped or not), an ``_include``d or ``_revinclude``d resource is
  returned only when the token's scopes let it read that type (an Encounter-only token never
  receives Patients), also in a batch's search entries (:func:`scoped_bundle`).

The decisions are :class:`~gateway.security.boundary.Boundary`'s (the one decision point); this
module applies them to the store's reads.

A refilled page may read many store rows when the client sees few of the matches (each client's
answer is computed once per request); narrow searches (``patient=…``) stay cheap.

Each refusal is noted in the request state (``STATE_WITHHELD``) for the request's AuditEvent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from starlette.requests import Request

from gateway.errors import StoreError
from gateway.fhirstore import FhirStore
from gateway.fhirstore.careteam import about_clients as _about_clients
from gateway.fhirstore.extract import extract
from gateway.fhirstore.query import MAX_COUNT, PageToken, Params, Query, parse_history, parse_search
from gateway.fhirstore.search import Entry, Page
from gateway.fhirstore.writer import check_type
from gateway.security.boundary import Boundary, boundary_of
from gateway.security.middleware import STATE_AUDIENCE, STATE_WITHHELD

WITHHELD = "withheld by the care-team and consent rule"
_BATCH = 100  # store rows read per refill step (at least _count + 1)
_DROPPED = frozenset({"_count", "_page", "_total", "_summary"})


class StoreView(Protocol):
    """The reads of the FHIR API: the store itself, or the store through the care-team rule."""

    def read(self, rtype: str, rid: str) -> Entry: ...

    def vread(self, rtype: str, rid: str, version: str) -> Entry: ...

    def search(self, rtype: str, params: Params, *, strict: bool = False) -> tuple[Query, Page]: ...

    def history(self, rtype: str, rid: str | None, params: Params, *, strict: bool = False) -> tuple[Query, Page]: ...


def view_of(request: Request, store: FhirStore) -> StoreView:
    """The store as the caller of ``request`` may read it (the store itself without a guard)."""
    boundary = boundary_of(request, store)
    if boundary.principal is None:
        return store
    if boundary.audience is None:
        return ScopedReads(store, boundary)
    return Visibility(store, boundary, lambda why: setattr(request.state, STATE_WITHHELD, why))


def scoped_bundle(boundary: Boundary, response: Any) -> Any:
    """A batch/transaction response without the included entries the caller's scopes do not cover."""
    for entry in response.get("entry") or [] if isinstance(response, dict) else []:
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(inner, dict) and inner.get("resourceType") == "Bundle" and inner.get("entry"):
            inner["entry"] = [e for e in inner["entry"] if (e.get("search") or {}).get("mode") != "include"
                              or boundary.visible(e.get("resource"), str((e.get("resource") or {}).get(
                                  "resourceType", "")))]
    return response


def check_bundle_reads(request: Request, bundle: Any) -> None:
    """403 when an organisation-scoped client puts a read (GET entry) in a batch or transaction."""
    if getattr(request.state, STATE_AUDIENCE, None) is None or not isinstance(bundle, dict):
        return
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        request_part = entry.get("request") if isinstance(entry, dict) else None
        if isinstance(request_part, dict) and str(request_part.get("method", "")).upper() in ("GET", "HEAD"):
            raise StoreError("an organisation-scoped client reads with the REST interactions, not in a Bundle",
                             status=403, issue_code="forbidden")


def about_clients(rtype: str) -> bool:
    """The types read through the rule: those about clients, and Subscriptions (each organisation's own)."""
    return rtype == "Subscription" or _about_clients(rtype)


def _not_found(what: str = "resource") -> StoreError:
    """Exactly the store's own answer for an unknown id (nothing tells the two apart)."""
    return StoreError(f"{what} not found", status=404, issue_code="not-found")


def _search_key(entry: Entry) -> tuple[Any, ...]:
    return (entry.lu_ms, entry.id)


def _history_key(entry: Entry) -> tuple[Any, ...]:
    return (entry.seq,)


def _batch_params(params: Params, count: int, token: PageToken | None, *, search: bool) -> Params:
    out = [(k, v) for k, v in params if k.partition(":")[0] not in _DROPPED]
    out.append(("_count", str(min(MAX_COUNT, max(count + 1, _BATCH)))))
    if search:
        out.append(("_total", "none"))
    if token is not None:
        out.append(("_page", token.encode()))
    return out


class ScopedReads:
    """The store for a caller without organisation: everything, but included types need their scope."""

    def __init__(self, store: FhirStore, boundary: Boundary) -> None:
        self.store = store
        self.boundary = boundary

    def read(self, rtype: str, rid: str) -> Entry:
        return self.store.read(rtype, rid)

    def vread(self, rtype: str, rid: str, version: str) -> Entry:
        return self.store.vread(rtype, rid, version)

    def search(self, rtype: str, params: Params, *, strict: bool = False) -> tuple[Query, Page]:
        q, page = self.store.search(rtype, params, strict=strict)
        page.included = [e for e in page.included if self.boundary.may_read_type(e.rtype)]
        return q, page

    def history(self, rtype: str, rid: str | None, params: Params, *, strict: bool = False) -> tuple[Query, Page]:
        return self.store.history(rtype, rid, params, strict=strict)


class Visibility:
    """The store as one organisation-scoped caller may read it, for one request (answers memoised)."""

    def __init__(self, store: FhirStore, boundary: Boundary,
                 on_withheld: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.boundary = boundary
        self._on_withheld = on_withheld

    def sees(self, resource: dict[str, Any] | None, rtype: str) -> bool:
        """May the caller see this resource (None: a deleted version, visible only if not about a client)?"""
        return self.boundary.sees(resource, rtype)

    def _withheld(self, what: str = "resource") -> StoreError:
        # 404, not 403: a 403 would tell the caller that this client's record exists here
        if self._on_withheld is not None:
            self._on_withheld(WITHHELD)
        return _not_found(what)

    # -- read, vread, instance history ----------------------------------------------------------
    def read(self, rtype: str, rid: str) -> Entry:
        try:
            entry = self.store.read(rtype, rid)
        except StoreError as exc:
            if exc.status == 410 and about_clients(rtype) and not self._some_version_visible(rtype, rid):
                raise self._withheld() from None
            raise
        if not self.sees(entry.resource, rtype):
            raise self._withheld()
        return entry

    def vread(self, rtype: str, rid: str, version: str) -> Entry:
        try:
            entry = self.store.vread(rtype, rid, version)
        except StoreError as exc:
            if exc.status == 410 and about_clients(rtype) and not self._some_version_visible(rtype, rid):
                raise self._withheld("version") from None
            raise
        if not self.sees(entry.resource, rtype):
            raise self._withheld("version")
        return entry

    def _some_version_visible(self, rtype: str, rid: str) -> bool:
        token: PageToken | None = None
        while True:
            params: Params = [("_count", str(MAX_COUNT))] + ([("_page", token.encode())] if token else [])
            _q, page = self.store.history(rtype, rid, params)
            if any(self.sees(e.resource, rtype) for e in page.entries if e.resource is not None):
                return True
            if page.next is None:
                return False
            token = page.next

    # -- search and history --------------------------------------------------------------------
    def search(self, rtype: str, params: Params, *, strict: bool = False) -> tuple[Query, Page]:
        if not about_clients(rtype):
            q, page = self.store.search(rtype, params, strict=strict)
            page.included = [e for e in page.included if self.boundary.visible(e.resource, e.rtype)]
            return q, page
        check_type(rtype)
        q = parse_search(rtype, params, strict=strict)

        def fetch(token: PageToken | None) -> Page:
            return self.store.search(rtype, _batch_params(params, q.count, token, search=True), strict=strict)[1]

        page = self._refilled(q, fetch, _search_key)
        page.included = self._included(q, page)
        return q, page

    def history(self, rtype: str, rid: str | None, params: Params, *, strict: bool = False) -> tuple[Query, Page]:
        if not about_clients(rtype):
            return self.store.history(rtype, rid, params, strict=strict)
        check_type(rtype)
        q = parse_history(rtype, params, strict=strict)
        if rid is not None and not self._some_version_visible(rtype, rid):
            raise self._withheld()

        def fetch(token: PageToken | None) -> Page:
            return self.store.history(rtype, rid, _batch_params(params, q.count, token, search=False),
                                      strict=strict)[1]

        return q, self._refilled(q, fetch, _history_key)

    def _refilled(self, q: Query, fetch: Callable[[PageToken | None], Page],
                  key: Callable[[Entry], tuple[Any, ...]]) -> Page:
        """One page of ``q.count`` visible entries, with links anchored on them (see the docstring)."""
        if q.count == 0:
            return Page([], None)
        forward = q.page is None or q.page.forward
        token = q.page
        kept: list[Entry] = []
        included: list[Entry] = []
        while True:
            batch = fetch(token)
            seen = [e for e in batch.entries if self.sees(e.resource, e.rtype)]
            kept = kept + seen if forward else seen + kept
            included += batch.included
            token = batch.next if forward else batch.previous
            if len(kept) > q.count or token is None:
                break
        more = len(kept) > q.count
        kept = kept[:q.count] if forward else kept[len(kept) - q.count:]
        if not kept:
            return Page([], None)
        has_next, has_prev = (more, q.page is not None) if forward else (True, more)
        return Page(kept, None, PageToken(True, key(kept[-1])) if has_next else None,
                    PageToken(False, key(kept[0])) if has_prev else None, included)

    def _included(self, q: Query, page: Page) -> list[Entry]:
        """The ``_include``d resources that a returned entry references and the audience may see."""
        if not q.includes or not page.entries:
            return []
        wanted = {(ttype, tid) for e in page.entries if e.resource is not None
                  for key, ttype, tid in extract(e.resource).refs
                  if any(key == k and target in (None, ttype) for k, target in q.includes)}
        matched = {(e.rtype, e.id) for e in page.entries}
        out: dict[tuple[str, str], Entry] = {}
        for e in page.included:
            ref = (e.rtype, e.id)
            if ref in wanted and ref not in matched and ref not in out and self.boundary.visible(e.resource, e.rtype):
                out[ref] = e
        return list(out.values())

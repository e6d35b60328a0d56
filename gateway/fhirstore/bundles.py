"""FHIR JSON built from store results: searchset and history Bundles, OperationOutcomes.

``base`` is the FHIR base URL of the request (``http://host:port/fhir``); every ``fullUrl`` and
link is absolute under it. Links repeat only the parameters the search actually used.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlencode

from gateway.fhirstore.dates import instant_text
from gateway.fhirstore.query import PageToken, Query
from gateway.fhirstore.search import Entry, Page

JSON = dict[str, Any]

STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request",
               404: "404 Not Found", 405: "405 Method Not Allowed", 406: "406 Not Acceptable",
               409: "409 Conflict", 410: "410 Gone", 412: "412 Precondition Failed",
               413: "413 Payload Too Large", 415: "415 Unsupported Media Type",
               422: "422 Unprocessable Entity", 500: "500 Internal Server Error",
               503: "503 Service Unavailable"}


def status_text(status: int) -> str:
    return STATUS_TEXT.get(status, str(status))


def operation_outcome(severity: str, code: str, diagnostics: str) -> JSON:
    """An OperationOutcome with one issue (``diagnostics`` must not contain resource content)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def _bundle(btype: str) -> JSON:
    return {"resourceType": "Bundle", "id": uuid.uuid4().hex,
            "meta": {"lastUpdated": instant_text(int(time.time() * 1000))}, "type": btype}


def _link(url: str, q: Query, page: PageToken | None) -> str:
    params = [(k, v) for k, v in q.link_params if k != "_count"] + [("_count", str(q.count))]
    if page is not None:
        params.append(("_page", page.encode()))
    return f"{url}?{urlencode(params)}" if params else url


def _links(url: str, q: Query, page: Page) -> list[JSON]:
    links = [{"relation": "self", "url": _link(url, q, q.page)}]
    if page.next is not None:
        links.append({"relation": "next", "url": _link(url, q, page.next)})
    if page.previous is not None:
        links.append({"relation": "previous", "url": _link(url, q, page.previous)})
    return links


def full_url(base: str, entry: Entry) -> str:
    return f"{base}/{entry.rtype}/{entry.id}"


def searchset(base: str, q: Query, page: Page) -> JSON:
    """A searchset Bundle: matches, then ``_include``d resources, then a warning on ignored params."""
    bundle = _bundle("searchset")
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = _links(f"{base}/{q.rtype}", q, page)
    entries = [{"fullUrl": full_url(base, e), "resource": e.resource, "search": {"mode": "match"}}
               for e in page.entries]
    entries += [{"fullUrl": full_url(base, e), "resource": e.resource, "search": {"mode": "include"}}
                for e in page.included]
    if q.ignored:
        names = ", ".join(sorted(set(q.ignored)))
        entries.append({"resource": operation_outcome("warning", "not-supported",
                                                      f"search parameters ignored: {names}"),
                        "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def _history_status(entry: Entry) -> str:
    if entry.resource is None:
        return "200 OK"
    return "201 Created" if entry.version == 1 or entry.method == "POST" else "200 OK"


def history_bundle(base: str, url: str, q: Query, page: Page) -> JSON:
    """A history Bundle, newest version first; a deletion has a request but no resource."""
    bundle = _bundle("history")
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = _links(url, q, page)
    entries = []
    for e in page.entries:
        item: JSON = {"fullUrl": full_url(base, e)}
        if e.resource is not None:
            item["resource"] = e.resource
        method = "DELETE" if e.resource is None else e.method
        item["request"] = {"method": method, "url": e.rtype if method == "POST" else f"{e.rtype}/{e.id}"}
        item["response"] = {"status": _history_status(e), "etag": f'W/"{e.version}"',
                            "lastModified": instant_text(e.lu_ms)}
        entries.append(item)
    if entries:
        bundle["entry"] = entries
    return bundle


def response_bundle(btype: str, entries: list[JSON]) -> JSON:
    """A transaction-response or batch-response Bundle."""
    bundle = _bundle(btype)
    bundle["entry"] = entries
    return bundle

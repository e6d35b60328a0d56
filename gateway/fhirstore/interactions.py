"""One FHIR interaction (read, search, create, update, conditional update/create, delete), whether
it comes from an HTTP request or from a transaction/batch entry: parse → check → execute.

Checks that need no database (types, ids, body/URL agreement, validation) run in :func:`check`
before the write lock is taken; :func:`resolve` and :func:`execute` run inside a transaction.

Conditional update ``PUT Type?criteria``: no match → create (with the body's id when it has one,
R4 "update as create"; else a server id); one match → update it (a body id that differs is a 400);
several → 412. Conditional create (``If-None-Exist``): no match → create; one → return it
unchanged (200); several → 412. Server ids are uuid4 hex.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import StoreError, ValidateError
from gateway.fhir.models import validate
from gateway.fhirstore.query import Params, parse_search
from gateway.fhirstore.search import Entry, Page, read_current, search
from gateway.fhirstore.secrets import has_masked, keep_secrets
from gateway.fhirstore.writer import Outcome, Writer, check_id, check_type

JSON = dict[str, Any]
_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')  # at most 18 digits: within SQLite's INTEGER


@dataclass(slots=True)
class Interaction:
    method: str  # GET, POST, PUT or DELETE
    rtype: str
    rid: str | None = None
    params: Params | None = None  # conditional criteria (PUT) or search parameters (GET)
    resource: JSON | None = None
    if_match: int | None = None
    if_none_exist: Params | None = None
    full_url: str | None = None
    target: str | None = field(default=None)  # the id this interaction writes, once resolved
    existing: bool = False  # conditional create that matched one resource


@dataclass(slots=True)
class Result:
    status: int
    outcome: Outcome | None = None
    entry: Entry | None = None
    page: Page | None = None
    query: Any = None


def bad(message: str, status: int = 400, code: str = "invalid") -> StoreError:
    return StoreError(message, status=status, issue_code=code)


def parse_if_match(value: object) -> int | None:
    """``W/"3"`` (or ``"3"``, ``3``) → 3; None when absent; 400 when malformed (or not a string)."""
    if value is None:
        return None
    match = _ETAG.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise bad("If-Match must be a version ETag such as W/\"1\"")
    return int(match.group(1))


def parse_query(text: str) -> Params:
    return parse_qsl(text, keep_blank_values=True)


def parse_criteria(text: str) -> Params:
    """If-None-Exist criteria: ``identifier=s|v`` (a leading ``Type?`` is tolerated)."""
    return parse_query(text.split("?", 1)[-1])


def parse_url(url: str, base: str) -> tuple[str, str | None, Params | None]:
    """A bundle entry's ``request.url`` → (type, id or None, query parameters or None)."""
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    path, sep, query = url.partition("?")
    parts = path.strip("/").split("/")
    if len(parts) > 2 or not parts[0]:
        raise bad("request.url must be Type, Type/id or Type?query")
    check_type(parts[0])
    return parts[0], check_id(parts[1]) if len(parts) == 2 else None, parse_query(query) if sep else None


def from_entry(entry: Any, base: str) -> Interaction:
    """A transaction/batch entry → an Interaction (400 when malformed)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise bad("entry without request")
    request = entry["request"]
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or not isinstance(url, str):
        raise bad("entry.request needs a method and a url")
    if method not in ("GET", "POST", "PUT", "DELETE"):
        raise bad("entry.request.method not supported", 405, "not-supported")
    rtype, rid, params = parse_url(url, base)
    inter = Interaction(method, rtype, rid, params, entry.get("resource"),
                        parse_if_match(request.get("ifMatch")),
                        parse_criteria(request["ifNoneExist"]) if isinstance(request.get("ifNoneExist"), str) else None,
                        entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None)
    return inter


def check(inter: Interaction) -> None:
    """Everything that needs no database: shape of the request, body/URL agreement, validation."""
    check_type(inter.rtype)
    shape_ok = {"GET": inter.resource is None, "DELETE": inter.rid is not None and inter.params is None,
                "POST": inter.rid is None and inter.params is None,
                "PUT": (inter.rid is None) != (inter.params is None)}
    if not shape_ok[inter.method]:
        raise bad(f"{inter.method} not supported on this URL", 405, "not-supported")
    if inter.method in ("GET", "DELETE"):
        return
    body = inter.resource
    if not isinstance(body, dict):
        raise bad("a resource body is required", 400, "structure")
    if body.get("resourceType") != inter.rtype:
        raise bad("resourceType of the body does not match the URL", 400, "invalid")
    if inter.method == "PUT" and inter.rid is not None and body.get("id") != inter.rid:
        raise bad("the id of the body must match the id in the URL", 400, "invalid")
    if inter.method == "POST":
        inter.resource = body = {k: v for k, v in body.items() if k != "id"}
    if "id" in body:
        check_id(body["id"])
    try:
        validate(body)
    except ValidateError as exc:
        raise bad(exc.message, 422, "invalid") from None


# the ids among those found that the caller may know (gateway/security/boundary.py's ``reach``)
Reach = Callable[[Writer, str, list[str]], list[str]]


def resolve(writer: Writer, inter: Interaction, reach: Reach | None = None) -> None:
    """Decide the id this interaction writes (conditional look-ups, server ids). ``reach``: a
    conditional look-up only finds what the caller may know, so its answer (created, unchanged,
    412 for several) says nothing about clients outside the caller's reach."""
    if inter.method == "GET":
        return

    def matches_of(params: Params) -> list[str]:
        found = writer.match_ids(inter.rtype, params)
        return reach(writer, inter.rtype, found) if reach is not None and found else found

    if inter.method == "POST":
        matches = matches_of(inter.if_none_exist) if inter.if_none_exist else []
        if len(matches) > 1:
            raise bad("If-None-Exist matches several resources", 412, "duplicate")
        inter.existing = bool(matches)
        inter.target = matches[0] if matches else uuid.uuid4().hex
    elif inter.method == "PUT" and inter.params is not None:
        matches = matches_of(inter.params)
        body_id = (inter.resource or {}).get("id")
        if len(matches) > 1:
            raise bad("conditional update matches several resources", 412, "duplicate")
        if matches and body_id is not None and body_id != matches[0]:
            raise bad("the id of the body differs from the resource the criteria match", 400, "invalid")
        inter.target = matches[0] if matches else (body_id if isinstance(body_id, str) else uuid.uuid4().hex)
    else:
        inter.target = inter.rid


def execute(writer: Writer, inter: Interaction) -> Result:
    """Run a checked, resolved interaction inside the writer's transaction."""
    if inter.method == "GET":
        if inter.rid is not None:
            return Result(200, entry=read_current(writer.conn, inter.rtype, inter.rid))
        q = parse_search(inter.rtype, inter.params or [], strict=False)
        return Result(200, page=search(writer.conn, q), query=q)
    assert inter.target is not None
    if inter.method == "DELETE":
        return Result(200, outcome=writer.delete(inter.rtype, inter.target, if_match=inter.if_match))
    if inter.existing:
        entry = read_current(writer.conn, inter.rtype, inter.target)
        return Result(200, outcome=Outcome(entry.rtype, entry.id, entry.version, entry.lu_ms, "unchanged",
                                           entry.resource))
    resource = {**(inter.resource or {}), "id": inter.target}
    if has_masked(resource):  # a Subscription read through the API and written back: keep its secrets
        resource = keep_secrets(resource, _stored(writer, inter.rtype, inter.target))
    outcome = writer.put(resource, if_match=inter.if_match, method=inter.method)
    return Result(201 if outcome.status == "created" else 200, outcome=outcome)


def _stored(writer: Writer, rtype: str, rid: str) -> JSON | None:
    """The current version of a live resource, None when absent or deleted."""
    try:
        return read_current(writer.conn, rtype, rid).resource
    except StoreError:
        return None

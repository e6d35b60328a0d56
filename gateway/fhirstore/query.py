"""Search and history request parameters → a checked query (SQL clauses and result options).

Parameters are read from the table in :mod:`gateway.fhirstore.params`. Repeating a parameter
ANDs its clauses; commas inside one value OR them (``\\,`` and ``\\|`` escape). Unknown parameter
names are ignored and reported (lenient, the FHIR default) or refused with 400 when the request
says ``Prefer: handling=strict``. A known parameter with a malformed value, an unsupported
modifier or an unsupported result option is always a 400. Error messages name parameters, never
their values (values such as health card numbers are health data).
"""

# SQL text here is assembled from fixed fragments only; every value is a "?" parameter.
# ruff: noqa: S608

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import StoreError
from gateway.fhirstore.dates import date_range, split_prefix, sql_condition
from gateway.fhirstore.extract import normalise, param_key, split_reference
from gateway.fhirstore.params import (
    HISTORY_PARAMS,
    RESULT_PARAMS,
    SEARCH_PARAMS,
    SORTS,
    SearchParam,
    include_params,
    supported,
)

DEFAULT_COUNT = 50
MAX_COUNT = 1000
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_STRING_MODIFIERS = ("", "exact", "contains")
_JSON_FORMATS = ("json", "application/json", "application/fhir+json")

Params = list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where a page starts: after (``forward``) or before the row whose sort key is ``key``."""

    forward: bool
    key: tuple[Any, ...]

    def encode(self) -> str:
        raw = json.dumps(["n" if self.forward else "p", *self.key], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, arity: int) -> PageToken:
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error):
            raise StoreError("invalid _page token", status=400, issue_code="invalid") from None
        if not isinstance(data, list) or len(data) != arity + 1 or data[0] not in ("n", "p") or not all(
            isinstance(k, int | str) for k in data[1:]
        ):
            raise StoreError("invalid _page token", status=400, issue_code="invalid")
        return cls(data[0] == "n", tuple(data[1:]))


@dataclass(slots=True)
class Query:
    """A checked search (or history) request."""

    rtype: str | None
    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    page: PageToken | None = None
    descending: bool = False
    summary_count: bool = False
    with_total: bool = True
    includes: list[tuple[str, str | None]] = field(default_factory=list)  # (param key, target type)
    link_params: Params = field(default_factory=list)  # what the self/next links repeat
    ignored: list[str] = field(default_factory=list)  # unknown parameter names (lenient mode)

    def add(self, clause: str, args: list[Any]) -> None:
        self.clauses.append(clause)
        self.args.extend(args)


def _bad(name: str, why: str = "invalid value") -> StoreError:
    return StoreError(f"search parameter {name}: {why}", status=400, issue_code="invalid")


def split_escaped(text: str, sep: str, keep: str = "") -> list[str]:
    """Split on ``sep`` unless escaped by a backslash; unescape ``\\,``, ``\\|``, ``\\$``, ``\\\\``
    except the escapes of the characters in ``keep`` (left as they are for a later split)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            current.append(("\\" + nxt) if nxt in keep or nxt not in ",|$\\" else nxt)
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _or_values(name: str, value: str, keep: str = "") -> list[str]:
    values = split_escaped(value, ",", keep)
    if any(v == "" for v in values):
        raise _bad(name, "empty value")
    return values


def _token_clause(q: Query, rtype: str, p: SearchParam, modifier: str, value: str) -> None:
    if modifier:
        raise _bad(p.name, "modifier not supported")
    values = _or_values(p.name, value, keep="|")
    if p.name == "_id":
        ids = [split_escaped(v, "|")[-1] for v in values]
        q.add(f"r.id IN ({','.join('?' * len(ids))})", ids)
        return
    ors: list[str] = []
    args: list[Any] = [param_key(rtype, p.name)]
    for v in values:
        parts = split_escaped(v, "|")
        if len(parts) == 1:
            ors.append("code = ?")
            args.append(parts[0])
        elif len(parts) == 2 and parts[1] == "":
            ors.append("system = ?")
            args.append(parts[0])
        elif len(parts) == 2:
            ors.append("(code = ? AND system = ?)")
            args.extend([parts[1], parts[0]])
        else:
            raise _bad(p.name)
    q.add(f"r.rk IN (SELECT rk FROM idx_token WHERE param = ? AND ({' OR '.join(ors)}))", args)


def _reference_clause(q: Query, rtype: str, p: SearchParam, modifier: str, value: str) -> None:
    if modifier and not supported(modifier):
        raise _bad(p.name, "modifier not supported")
    ors: list[str] = []
    args: list[Any] = [param_key(rtype, p.name)]
    for v in _or_values(p.name, value):
        target = (modifier, v) if _ID.fullmatch(v) else split_reference(v)
        if target is None or (modifier and target[0] != modifier):
            raise _bad(p.name)
        if target[0]:
            ors.append("(tid = ? AND ttype = ?)")
            args.extend([target[1], target[0]])
        else:
            ors.append("tid = ?")
            args.append(target[1])
    q.add(f"r.rk IN (SELECT rk FROM idx_ref WHERE param = ? AND ({' OR '.join(ors)}))", args)


def date_condition(name: str, value: str, lo_col: str, hi_col: str) -> tuple[str, list[int]]:
    prefix, text = split_prefix(value)
    try:
        lo, hi = date_range(text)
    except ValueError:
        raise _bad(name) from None
    return sql_condition(prefix, lo_col, hi_col, lo, hi)


def _date_clause(q: Query, rtype: str, p: SearchParam, modifier: str, value: str) -> None:
    if modifier:
        raise _bad(p.name, "modifier not supported")
    conditions = [date_condition(p.name, v, "lo", "hi") if p.name != "_lastUpdated"
                  else date_condition(p.name, v, "r.lu_ms", "r.lu_ms") for v in _or_values(p.name, value)]
    sql = " OR ".join(c for c, _ in conditions)
    args = [a for _, cargs in conditions for a in cargs]
    if p.name == "_lastUpdated":
        q.add(f"({sql})", args)
    else:
        q.add(f"r.rk IN (SELECT rk FROM idx_date WHERE param = ? AND ({sql}))", [param_key(rtype, p.name), *args])


def _string_clause(q: Query, rtype: str, p: SearchParam, modifier: str, value: str) -> None:
    if modifier not in _STRING_MODIFIERS:
        raise _bad(p.name, "modifier not supported")
    ors: list[str] = []
    args: list[Any] = [param_key(rtype, p.name)]
    for v in _or_values(p.name, value):
        if modifier == "exact":
            ors.append("raw = ?")
            args.append(v)
        elif modifier == "contains":
            needle = normalise(v).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            ors.append("norm LIKE ? ESCAPE '\\'")
            args.append(f"%{needle}%")
        else:
            ors.append("(norm >= ? AND norm < ?)")
            args.extend([normalise(v), normalise(v) + "\U0010ffff"])
    q.add(f"r.rk IN (SELECT rk FROM idx_string WHERE param = ? AND ({' OR '.join(ors)}))", args)


_CLAUSES = {"token": _token_clause, "reference": _reference_clause, "date": _date_clause,
            "string": _string_clause}


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise _bad("_count") from None
    if count < 0:
        raise _bad("_count")
    return min(count, MAX_COUNT)


def _format(value: str) -> None:
    if value.split(";")[0].strip() not in _JSON_FORMATS:
        raise StoreError("only JSON is supported (_format)", status=406, issue_code="not-supported")


def _include(q: Query, rtype: str, value: str) -> bool:
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] != rtype:
        return False
    names = {p.name for p in include_params(rtype)}
    if parts[1] not in names or (len(parts) == 3 and not supported(parts[2])):
        return False
    q.includes.append((param_key(rtype, parts[1]), parts[2] if len(parts) == 3 else None))
    return True


def _result_param(q: Query, rtype: str, name: str, value: str) -> bool:
    """Apply one result parameter; False when it should be treated as unknown."""
    if name == "_count":
        q.count = _count(value)
    elif name == "_page":
        q.page = PageToken.decode(value, 2)
        return True
    elif name == "_sort":
        if value not in SORTS:
            raise _bad("_sort", "only _lastUpdated and -_lastUpdated are supported")
        q.descending = value.startswith("-")
    elif name == "_summary":
        if value not in ("count", "false"):
            raise _bad("_summary", "only count and false are supported")
        q.summary_count = value == "count"
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise _bad("_total")
        q.with_total = value != "none"
    elif name == "_include":
        if not _include(q, rtype, value):
            return False
    elif name == "_format":
        _format(value)
    q.link_params.append((name, value))
    return True


def parse_search(rtype: str, params: Params, *, strict: bool) -> Query:
    """Check the parameters of a search of ``rtype``; raise StoreError(400) on a bad request."""
    q = Query(rtype)
    known = SEARCH_PARAMS[rtype]
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in RESULT_PARAMS and not modifier:
            handled = _result_param(q, rtype, name, value)
        elif name in RESULT_PARAMS:
            raise _bad(name, "modifier not supported")
        elif name in known:
            _CLAUSES[known[name].type](q, rtype, known[name], modifier, value)
            q.link_params.append((raw_name, value))
            handled = True
        else:
            handled = False
        if not handled:
            if strict:
                raise StoreError(f"unknown or unsupported search parameter {raw_name}", status=400,
                                 issue_code="not-supported")
            q.ignored.append(raw_name)
    if q.summary_count:
        q.count = 0
    return q


def parse_history(rtype: str | None, params: Params, *, strict: bool) -> Query:
    """Check the parameters of a history request (``_count``, ``_page``, ``_since``)."""
    q = Query(rtype, descending=True)
    for name, value in params:
        if name == "_since":
            try:
                since = date_range(value)[0]
            except ValueError:
                raise _bad("_since") from None
            q.add("v.lu_ms >= ?", [since])
        elif name == "_page":
            q.page = PageToken.decode(value, 1)
            continue
        elif name == "_count":
            q.count = _count(value)
        elif name == "_format":
            _format(value)
        elif name not in HISTORY_PARAMS:
            if strict:
                raise StoreError(f"unknown or unsupported history parameter {name}", status=400,
                                 issue_code="not-supported")
            q.ignored.append(name)
            continue
        q.link_params.append((name, value))
    return q

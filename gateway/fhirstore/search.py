"""Running checked queries (:mod:`gateway.fhirstore.query`) on one SQLite connection.

Searches are ordered by ``(lastUpdated, id)`` (``_sort=-_lastUpdated`` reverses it); histories by
write sequence, newest first. Paging is keyset paging: a page token holds the sort key of the row
a page starts after (next) or before (previous), so walking the next links visits every matching
resource once even while writes go on (a resource updated meanwhile moves to the end).
"""

# SQL text here is assembled from fixed fragments only; every value is a "?" parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import StoreError
from gateway.fhirstore.query import PageToken, Query

_BODY = "JOIN versions v ON v.rk = r.rk AND v.version = r.version"


@dataclass(slots=True)
class Entry:
    """One row of a page: the current resource (search) or one version (history)."""

    rtype: str
    id: str
    version: int
    lu_ms: int
    resource: dict[str, Any] | None  # None for a deleted version
    method: str = "PUT"
    seq: int = 0  # history: the version's write sequence (its paging key)


@dataclass(slots=True)
class Page:
    entries: list[Entry]
    total: int | None
    next: PageToken | None = None
    previous: PageToken | None = None
    included: list[Entry] = field(default_factory=list)


def _page(rows: list[Any], q: Query, key: Any) -> tuple[list[Any], PageToken | None, PageToken | None]:
    forward = q.page is None or q.page.forward
    more = len(rows) > q.count
    rows = rows[: q.count]
    if not forward:
        rows.reverse()
    has_next, has_prev = (more, q.page is not None) if forward else (True, more)
    nxt = PageToken(True, key(rows[-1])) if has_next and rows else None
    prev = PageToken(False, key(rows[0])) if has_prev and rows else None
    return rows, nxt, prev


def search(conn: sqlite3.Connection, q: Query) -> Page:
    """One page of a search, its total and the resources its ``_include`` asks for."""
    where = " AND ".join(["r.rtype = ?", "r.deleted = 0", *q.clauses])
    args: list[Any] = [q.rtype, *q.args]
    total = None
    if q.with_total or q.summary_count:
        total = int(conn.execute(f"SELECT count(*) FROM resources r WHERE {where}", args).fetchone()[0])
    if q.count == 0:
        return Page([], total)
    forward = q.page is None or q.page.forward
    ascending = (not q.descending) == forward
    order = "ASC" if ascending else "DESC"
    if q.page is not None:
        where += f" AND (r.lu_ms, r.id) {'>' if ascending else '<'} (?, ?)"
        args.extend(q.page.key)
    rows = conn.execute(
        f"SELECT r.rk, r.id, r.version, r.lu_ms, v.body FROM resources r {_BODY} WHERE {where} "
        f"ORDER BY r.lu_ms {order}, r.id {order} LIMIT ?", [*args, q.count + 1]).fetchall()
    rows, nxt, prev = _page(rows, q, lambda row: (row[3], row[1]))
    entries = [Entry(str(q.rtype), row[1], row[2], row[3], json.loads(row[4])) for row in rows]
    page = Page(entries, total, nxt, prev)
    if q.includes and rows:
        page.included = _includes(conn, q, [row[0] for row in rows], {e.id for e in entries})
    return page


def _includes(conn: sqlite3.Connection, q: Query, rks: list[int], matched: set[str]) -> list[Entry]:
    targets: dict[tuple[str, str], None] = {}
    marks = ",".join("?" * len(rks))
    for key, target_type in q.includes:
        sql = f"SELECT ttype, tid FROM idx_ref WHERE param = ? AND rk IN ({marks})"
        args: list[Any] = [key, *rks]
        if target_type is not None:
            sql += " AND ttype = ?"
            args.append(target_type)
        for ttype, tid in conn.execute(sql + " ORDER BY rowid", args):
            if not (ttype == q.rtype and tid in matched):
                targets[(ttype, tid)] = None
    out: list[Entry] = []
    for ttype, tid in targets:
        row = conn.execute(
            f"SELECT r.version, r.lu_ms, v.body FROM resources r {_BODY} "
            "WHERE r.rtype = ? AND r.id = ? AND r.deleted = 0", (ttype, tid)).fetchone()
        if row is not None:
            out.append(Entry(ttype, tid, row[0], row[1], json.loads(row[2])))
    return out


def history(conn: sqlite3.Connection, q: Query, rk: int | None = None) -> Page:
    """One page of the history of a type (``rk`` None) or of one resource, newest first."""
    where = " AND ".join(["v.rk = ?" if rk is not None else "v.rtype = ?", *q.clauses])
    args: list[Any] = [rk if rk is not None else q.rtype, *q.args]
    total = int(conn.execute(f"SELECT count(*) FROM versions v WHERE {where}", args).fetchone()[0])
    if q.count == 0:
        return Page([], total)
    forward = q.page is None or q.page.forward
    if q.page is not None:
        where += f" AND v.seq {'<' if forward else '>'} ?"
        args.append(q.page.key[0])
    rows = conn.execute(
        f"SELECT v.seq, v.rtype, r.id, v.version, v.lu_ms, v.body, v.method FROM versions v "
        f"JOIN resources r ON r.rk = v.rk WHERE {where} ORDER BY v.seq {'DESC' if forward else 'ASC'} LIMIT ?",
        [*args, q.count + 1]).fetchall()
    rows, nxt, prev = _page(rows, q, lambda row: (row[0],))
    entries = [Entry(row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] is not None else None, row[6],
                     row[0]) for row in rows]
    return Page(entries, total, nxt, prev)


def read_current(conn: sqlite3.Connection, rtype: str, rid: str) -> Entry:
    """The current version of one resource; StoreError 404 when unknown, 410 when deleted."""
    row = conn.execute(
        f"SELECT r.version, r.lu_ms, r.deleted, v.body FROM resources r {_BODY} WHERE r.rtype = ? AND r.id = ?",
        (rtype, rid)).fetchone()
    if row is None:
        raise StoreError("resource not found", status=404, issue_code="not-found")
    if row[2]:
        raise StoreError("resource deleted", status=410, issue_code="deleted")
    return Entry(rtype, rid, row[0], row[1], json.loads(row[3]))

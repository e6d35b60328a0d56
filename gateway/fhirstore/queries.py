"""Named read queries of the store for the rules (Défi Santé, pharmacy) and the console.

The program's rules and the console need a few reads the FHIR search API does not give cheaply
(every current resource of a type at once, the version sequence as a cursor, ids by identifier
without building Bundles). They ask for them here by name; the SQL stays in this package.

    store_version(store)                       max(versions.seq): changes on every write
    latest_seq(store, rtype)                   the latest version sequence number of a type (0: none)
    versions_after(store, rtype, seq, limit)   (seq, body or None for a deletion) written after ``seq``
    current_projected(store, fields)           in one snapshot: store_version and, per type, every
                                               current resource reduced to id, meta.source and the
                                               named top-level elements (SQLite's JSON functions cut
                                               them out: a few hundred bytes decoded per resource)
    current_with_token(store, rtype, param, system, code)   current resources whose indexed token
                                               ``param`` is ``system|code`` (e.g. Flags by code)
    ids_with_identifier(store, rtype, identifiers, limit)   ids of current resources sharing one of
                                               ``(system, value)`` (the ``<type>.identifier`` index)

Every function reads one consistent snapshot (``FhirStore.reading()``); a busy or broken database
raises :data:`BackendError` (the SQLite error type, for callers that turn it into a retry), a closed
store StoreError 503. :func:`past_limits` tells the HTTP layer that a query failed on the
database's own limits (the request's fault: a 400, not a 500).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.fhirstore.store import FhirStore

JSON = dict[str, Any]
BackendError = sqlite3.Error
"""The database's own error (busy, locked, disk full, too complex): catch this name, not sqlite3's."""

_CURRENT = ("SELECT {projection} FROM resources r JOIN versions v ON v.rk = r.rk AND v.version = r.version "
            "WHERE r.rtype = ? AND r.deleted = 0")
_ELEMENT = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# messages of the SQLite errors a request's own size causes (too many terms, too deep, too long)
_LIMIT_MESSAGES = ("too many", "too large", "too complex", "too big", "stack overflow")


@dataclass(frozen=True, slots=True)
class Projection:
    """The store version of one snapshot and, per type, its current resources reduced (see above)."""

    version: int
    resources: dict[str, list[JSON]]


def past_limits(exc: BaseException) -> bool:
    """Whether ``exc`` is the database refusing a query past its limits (the request's own fault)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(m in str(exc) for m in _LIMIT_MESSAGES)


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT max(seq) FROM versions").fetchone()[0] or 0)


def store_version(store: FhirStore) -> int:
    """A number that changes whenever anything is written to the store."""
    with store.reading() as conn:
        return _version(conn)


def latest_seq(store: FhirStore, rtype: str) -> int:
    """The latest version sequence number of a ``rtype`` resource (0 when none)."""
    with store.reading() as conn:
        row = conn.execute("SELECT max(seq) FROM versions WHERE rtype = ?", (rtype,)).fetchone()
    return int(row[0] or 0)


def versions_after(store: FhirStore, rtype: str, seq: int, limit: int) -> list[tuple[int, JSON | None]]:
    """Versions of ``rtype`` written after ``seq`` in commit order, at most ``limit``: ``(seq, body)``,
    body None for a deletion."""
    with store.reading() as conn:
        rows = conn.execute("SELECT seq, body FROM versions WHERE rtype = ? AND seq > ? ORDER BY seq LIMIT ?",
                            (rtype, seq, limit)).fetchall()
    return [(int(number), None if body is None else json.loads(body)) for number, body in rows]


def _projection_sql(elements: Sequence[str]) -> str:
    for name in elements:
        if not _ELEMENT.fullmatch(name):
            raise ValueError(f"not a top-level element name: {name!r}")
    parts = ["'id', r.id", "'meta', json_object('source', json_extract(v.body, '$.meta.source'))"]
    parts += [f"'{name}', json_extract(v.body, '$.{name}')" for name in elements]
    return _CURRENT.format(projection=f"json_object({', '.join(parts)})")


def current_projected(store: FhirStore, fields: Mapping[str, Sequence[str]]) -> Projection:
    """In one snapshot: the store version and, for each type of ``fields``, its current resources
    reduced to ``id``, ``meta.source`` and the named top-level elements (store order)."""
    queries = {rtype: _projection_sql(elements) for rtype, elements in fields.items()}
    with store.reading() as conn:
        version = _version(conn)
        out = {rtype: [json.loads(body) for (body,) in conn.execute(sql, (rtype,))] for rtype, sql in queries.items()}
    return Projection(version, out)


def current_with_token(store: FhirStore, rtype: str, param: str, system: str, code: str) -> list[JSON]:
    """Current ``rtype`` resources whose token search parameter ``param`` (e.g. ``Flag.code``) is
    ``system|code``, in store order."""
    sql = ("SELECT v.body FROM resources r JOIN versions v ON v.rk = r.rk AND v.version = r.version "
           "WHERE r.rtype = ? AND r.deleted = 0 AND r.rk IN "
           "(SELECT rk FROM idx_token WHERE param = ? AND system = ? AND code = ?)")
    with store.reading() as conn:
        return [json.loads(body) for (body,) in conn.execute(sql, (rtype, param, system, code))]


def ids_with_identifier(store: FhirStore, rtype: str, identifiers: Sequence[tuple[str, str]],
                        limit: int = 20) -> list[str]:
    """Ids of current ``rtype`` resources having one of the ``(system, value)`` identifiers (one
    indexed query; at most ``limit``; [] when no identifier is given)."""
    if not identifiers:
        return []
    terms = " OR ".join("(t.system = ? AND t.code = ?)" for _ in identifiers)
    sql = ("SELECT DISTINCT r.id FROM idx_token t JOIN resources r ON r.rk = t.rk WHERE "  # noqa: S608 - fixed fragments; values bound
           f"t.param = ? AND r.deleted = 0 AND ({terms}) LIMIT ?")
    args: list[object] = [f"{rtype}.identifier", *(v for pair in identifiers for v in pair), limit]
    with store.reading() as conn:
        return [str(row[0]) for row in conn.execute(sql, args)]

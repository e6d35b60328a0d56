"""Does one resource satisfy search criteria? The store's own index and query code, on one resource.

:class:`Matcher` keeps a private in-memory SQLite database with the store's schema. To test a
resource it writes that resource alone there (same :class:`Writer`, same index extraction), runs
``Type?_id=<id>&<criteria>`` with the store's query code, and rolls back. So criteria mean exactly
what they mean in a ``/fhir`` search, and they are evaluated against the very version that was
written (not whatever the store holds by the time a subscription looks), which also lets a caller
test a *previous* version (R5 ``queryCriteria.previous``).

One addition over the HTTP search: ``name:not=a,b`` on a token parameter (the resource has none of
the values, or no value at all), evaluated as the negation of the positive search. Criteria are
checked with :meth:`Matcher.check` (strict: unknown parameters refused) before they are used.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

from gateway.errors import StoreError
from gateway.fhirstore.params import RESULT_PARAMS, SEARCH_PARAMS
from gateway.fhirstore.query import Params, parse_search
from gateway.fhirstore.search import search
from gateway.fhirstore.store import _SCHEMA
from gateway.fhirstore.writer import Writer, check_type

MatchFn = Callable[[Params], bool]


def _split(rtype: str, params: Params) -> tuple[Params, Params]:
    """(positive parameters, negated token parameters without their ``:not``)."""
    positive: Params = []
    negated: Params = []
    for name, value in params:
        base, _, modifier = name.partition(":")
        if modifier == "not":
            known = SEARCH_PARAMS.get(rtype, {}).get(base)
            if known is None or known.type != "token":
                raise StoreError(f"search parameter {name}: modifier not supported", status=400,
                                 issue_code="invalid")
            negated.append((base, value))
        else:
            positive.append((name, value))
    return positive, negated


class Matcher:
    """Evaluates search criteria against single resources (thread-safe, one scratch database)."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def check(rtype: str, params: Params) -> None:
        """Refuse criteria the store cannot evaluate (StoreError 400/405, naming the parameter)."""
        check_type(rtype)
        for name, _value in params:
            if name.partition(":")[0] in RESULT_PARAMS:
                raise StoreError(f"criteria take search parameters only, not {name}", status=400,
                                 issue_code="invalid")
        positive, negated = _split(rtype, params)
        parse_search(rtype, positive + negated, strict=True)

    @contextlib.contextmanager
    def holding(self, resource: dict[str, Any]) -> Iterator[MatchFn]:
        """Hold ``resource`` in the scratch database; yields ``matches(params) -> bool``."""
        rtype, rid = str(resource.get("resourceType")), str(resource.get("id"))
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                Writer(self._conn, 0).put(resource)

                def matches(params: Params) -> bool:
                    positive, negated = _split(rtype, params)
                    if not self._found(rtype, rid, positive):
                        return False
                    return not any(self._found(rtype, rid, [item]) for item in negated)

                yield matches
            finally:
                self._conn.execute("ROLLBACK")

    def matches(self, resource: dict[str, Any], params: Params) -> bool:
        """True when ``resource`` satisfies ``params``."""
        with self.holding(resource) as match:
            return match(params)

    def _found(self, rtype: str, rid: str, params: Params) -> bool:
        q = parse_search(rtype, [("_id", rid), *params], strict=True)
        q.count, q.with_total = 1, False
        return bool(search(self._conn, q).entries)

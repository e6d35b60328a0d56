"""One person across sites: identity resolution between mapping and publication (issue #3).

``IdentityResolver.resolve(result)`` runs on every mapped message, in the intake (a refusal is a
MapError, ACK AE) and in the mapping worker (what it returns is published). It keeps an index
(:mod:`gateway.eventlog.state.identity`) of identifier → person and rewrites each message so that one
person is one Patient: every identifier the person is known by, every reference pointing at it,
links and merges honoured, stale writes dropped, cancels applied as reversals, possible duplicates
listed as Flags. The policy, the tables and how to rebuild the index: README.md in this package.

    resolver = IdentityResolver(data_dir)        # None: in memory (tests)
    resolver = IdentityResolver(data_dir, state_url)  # PIVOT_STATE_URL: PostgreSQL, shared by instances
    result = resolver.resolve(map_message(msg, ctx))
    resolver.duplicates()                        # possible duplicates (ids only)
    resolver.rebuild(results)                    # replay mapped messages into an empty index
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError
from gateway.eventlog.state.identity import open_index
from gateway.identity.keys import is_identity_key, is_nam
from gateway.identity.resolve import Resolution
from mappings import MapResult

__all__ = ["Duplicate", "IdentityResolver"]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A possible-duplicate Flag (one per record, gateway/identity/clusters.py): the Flag id, the
    record (``patient_a``) and the look-alike it names (``patient_b``), the identifier systems of
    each person's site records (never values), whether each has a NAM, and since when (event time)."""

    flag_id: str
    patient_a: str
    patient_b: str
    active: bool
    since: str
    sites_a: tuple[str, ...]
    sites_b: tuple[str, ...]
    nam_a: bool
    nam_b: bool


class IdentityResolver:
    """Rewrites a mapped message so that one person is one Patient (see module docstring).

    ``state_url`` (``PIVOT_STATE_URL``): the index lives in that PostgreSQL database, shared by every
    instance; empty: in ``data_dir`` (``identity.sqlite``, mode 0600), in memory when None.
    Thread-safe: messages are resolved one at a time, each all or nothing, one transaction each
    under the index's lock (across instances on PostgreSQL).
    """

    def __init__(self, data_dir: Path | None = None, state_url: str = "") -> None:
        self.data_dir = data_dir
        self.index = open_index(data_dir, state_url)

    def resolve(self, result: MapResult) -> MapResult:
        """The message as it must be published, ranked (``MapResult.resolved``) among every resolution of
        every instance; MapError (AE, ERR-3 205) on an identity conflict."""
        if not any(r["resourceType"] == "Patient" for r in result.resources):
            return result
        with self.index.transaction():
            resolved = Resolution(self.index, result).run()
            resolved.resolved = self.index.tick()  # its rank: the store sink keeps the latest per resource
            return resolved

    def duplicates(self, *, include_resolved: bool = False) -> list[Duplicate]:
        """Possible duplicates, open ones only unless ``include_resolved``."""
        out = []
        with self.index.transaction() as ix:
            for pair in ix.pairs(include_resolved=include_resolved):
                flag = ix.resource("Flag", pair.id)
                since = str(((flag.body if flag else {}).get("period") or {}).get("start", ""))
                out.append(Duplicate(pair.id, pair.a, pair.b, pair.active, since, self._sites(pair.a),
                                     self._sites(pair.b), self._has_nam(pair.a), self._has_nam(pair.b)))
        return out

    def _sites(self, person: str) -> tuple[str, ...]:
        systems = {str(body.get("system", "")) for _k, _key, body in self.index.identifiers(person)
                   if is_identity_key(body) and not is_nam(body)}
        return tuple(sorted(systems))

    def _has_nam(self, person: str) -> bool:
        row = self.index.person(person)
        return row is not None and row.nam is not None

    def rebuild(self, results: Iterable[MapResult | GatewayError]) -> tuple[int, int]:
        """Empty the index, then resolve ``results`` (mapped messages in log order; a mapping error
        stands for a message that was refused) and discard the output: the index ends as it was
        after the original run. Returns (resolved, refused)."""
        self.index.clear()
        resolved = refused = 0
        for item in results:
            if isinstance(item, GatewayError):
                refused += 1
                continue
            try:
                self.resolve(item)
                resolved += 1
            except GatewayError:
                refused += 1
        return resolved, refused

    def close(self) -> None:
        self.index.close()

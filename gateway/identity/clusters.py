"""Possible duplicates as clusters of look-alikes, with constant work per message.

Look-alikes are active persons with the same demographic digest (family name, first given name,
birth date, sex: gateway.identity.keys.demographic_digest); two persons that both have a NAM are
two people, never duplicates of each other. A person joins the cluster of its digest; each member
that has an *eligible* look-alike (any other member when it has no NAM, a member without NAM when
it has one) carries **one** possible-duplicate Flag, naming the earliest eligible look-alike at the
time it was opened. So 5,000 look-alike test patients make 5,000 Flags, not 12.5 million pairs.

Work per message: a person already in its cluster costs one index read; a
newcomer costs two index probes (its partner) plus one Flag for each member that had none (the
first look-alike of a cluster; NAM holders when the first member without NAM arrives). When a
person leaves (merged, linked, demographics changed) its Flag closes and the Flags naming it are
re-pointed to another eligible member or closed: the only step that grows with the cluster, and
it runs only when the earliest member of a cluster leaves. One DEBUG log line per cluster change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gateway.eventlog.state.identity import IdentityIndex, Pair, Stored
from gateway.identity import bodies
from gateway.identity.keys import demographic_digest
from mappings import stable_id

JSON = dict[str, Any]
log = logging.getLogger("pivot.identity")


def flag_id(person: str) -> str:
    """The id of ``person``'s possible-duplicate Flag (one per record)."""
    return stable_id("Flag", "possible-duplicate", person)


class Clusters:
    """The possible-duplicate work of one message; ``publish`` re-publishes a Flag (journaled)."""

    def __init__(self, ix: IdentityIndex, publish: Callable[[Stored], None], *, event_time: str, event_ms: int,
                 meta: JSON | None, control_id: str) -> None:
        self.ix = ix
        self.publish = publish
        self.event_time = event_time
        self.event_ms = event_ms
        self.meta = meta
        self.control_id = control_id

    def place(self, person: str, patient: JSON, has_nam: bool) -> None:
        """``person`` (its current Patient) into the cluster of its digest, Flags opened as needed."""
        digest = demographic_digest(patient)
        old = self.ix.member(person)
        if old is not None and (old[0] != digest or old[1] != has_nam):
            self.leave(person)
            old = None
        if digest is None or old is not None:
            # no complete key, or already in its cluster: flagged already, or nobody eligible yet
            # (a look-alike joining later flags the members without a Flag: see below)
            return
        self.ix.join(person, digest, has_nam)
        partner = self.ix.partner(digest, person, without_nam=has_nam)
        if partner is None:
            return
        self._open(person, partner)
        others = self.ix.unflagged(digest, person, without_nam=has_nam)
        for other in others:
            self._open(other, person)
        log.debug("identity: possible-duplicate cluster joined by %s (%d flag(s) opened, control_id=%s)", person,
                  1 + len(others), self.control_id)

    def leave(self, person: str) -> None:
        """``person`` is no longer a look-alike (merged, linked, demographics changed): its Flag
        closes; Flags naming it name another eligible member, or close."""
        if self.ix.member(person) is None:
            return
        self.ix.leave(person)
        own = self.ix.pair(flag_id(person))
        if own is not None and own.active:
            self._close(own)
        for pair in self.ix.flags_naming(person):
            member = self.ix.member(pair.a)
            other = self.ix.partner(member[0], pair.a, without_nam=member[1]) if member is not None else None
            if other is not None:
                self._open(pair.a, other)
            else:
                self._close(pair)
        log.debug("identity: possible-duplicate cluster left by %s (control_id=%s)", person, self.control_id)

    def _open(self, member: str, other: str) -> None:
        fid = flag_id(member)
        stored = self.ix.resource("Flag", fid)
        old = self.ix.pair(fid)
        since = self.event_time
        if stored is not None and old is not None and old.active:  # re-pointed: still open since then
            since = str((stored.body.get("period") or {}).get("start", "")) or since
        self.ix.put_pair(Pair(fid, member, other, True))
        self.ix.set_flagged(member, True)
        flag = bodies.duplicate_flag(fid, member, other, active=True, since=since, until="", meta=self.meta)
        self.publish(Stored("Flag", fid, member, self.event_ms, flag))

    def _close(self, pair: Pair) -> None:
        self.ix.put_pair(Pair(pair.id, pair.a, pair.b, False))
        self.ix.set_flagged(pair.a, False)
        stored = self.ix.resource("Flag", pair.id)
        since = str((stored.body.get("period") or {}).get("start", "")) if stored else ""
        flag = bodies.duplicate_flag(pair.id, pair.a, pair.b, active=False, since=since, until=self.event_time,
                                     meta=self.meta)
        self.publish(Stored("Flag", pair.id, pair.a, self.event_ms, flag))

"""The identity index shared by instances (issue #15): PostgreSQL under concurrency, and a 0.4.0
SQLite index opened by this version.

Two resolvers on one PostgreSQL database are two instances (two connections). They resolve, in two
threads released at the same moment, messages of the same person: a site-only registration at HSA
and a duplicate registration at HSA on one side; the NAM-bearing registration at HLA, the A08
bringing the NAM to the HSA record and the A40 merging HSA's duplicate record on the other. Every
resolution takes the lock ``identity`` (gateway/eventlog/state/identity.py), so the index ends as
after a serial run: one person per round, every key naming it. Without the lock the two sides
insert the same key or create two persons (checked when the test was written by dropping the lock
from PostgresDb.transaction: the rounds failed with UniqueViolation or a second person).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from gateway.eventlog.state.identity import IdentityIndex, Pair, Stored
from gateway.identity import IdentityResolver
from gateway.identity.keys import nam_person_id
from tests.test_identity_messages import NAM_SYSTEM, adt, mapped, mrn_system

ROUNDS = 6
Snapshot = dict[str, Any]


def _nam(r: int) -> str:
    return f"TREJ400101{r:02d}"


def _sides(r: int) -> tuple[list[bytes], list[bytes]]:
    """Round ``r``'s messages of one person, as two instances receive them."""
    who = {"family": f"Tremblay{'ABCDEFGHIJ'[r]}"}
    first = [adt("A04", site="HSA", mrn=f"A{r}", control_id=f"a{r}", when="202601010800", **who),
             adt("A04", site="HSA", mrn=f"X{r}", control_id=f"x{r}", when="202601010805", **who)]
    second = [adt("A04", site="HLA", mrn=f"B{r}", nam=_nam(r), control_id=f"b{r}", when="202601010900", **who),
              adt("A08", site="HSA", mrn=f"A{r}", nam=_nam(r), control_id=f"c{r}", when="202601011000", **who),
              adt("A40", site="HSA", mrn=f"A{r}", mrg=f"X{r}", control_id=f"m{r}", when="202601011100", **who)]
    return first, second


def _keys(r: int) -> list[str]:
    return [f"{NAM_SYSTEM}|{_nam(r)}", f"{mrn_system('HSA')}|A{r}", f"{mrn_system('HSA')}|X{r}",
            f"{mrn_system('HLA')}|B{r}"]


def snapshot(ix: IdentityIndex) -> Snapshot:
    """Who is who: the active persons with their keys, where every key of every round leads."""
    with ix.transaction():
        persons = sorted({ix.final(p) for r in range(ROUNDS) for k in _keys(r) if (p := ix.person_of_key(k))})
        return {"active": ix.active_persons(), "persons": persons,
                "keys": {k: ix.final(ix.person_of_key(k) or "") for r in range(ROUNDS) for k in _keys(r)},
                "identifiers": {p: [k for k, _is_key, _body in ix.identifiers(p)] for p in persons},
                "open flags": ix.pairs()}


def _resolve_all(resolver: IdentityResolver, messages: list[bytes], start: threading.Barrier,
                 errors: list[BaseException]) -> None:
    try:
        start.wait(30)
        for raw in messages:
            resolver.resolve(mapped(raw))
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _serial() -> Snapshot:
    """The reference: one instance, one message after the other."""
    serial = IdentityResolver(None)
    for r in range(ROUNDS):
        first, second = _sides(r)
        for raw in [*first, *second]:
            serial.resolve(mapped(raw))
    expected = snapshot(serial.index)
    serial.close()
    assert expected["active"] == ROUNDS
    assert expected["persons"] == sorted(nam_person_id(_nam(r)) for r in range(ROUNDS))
    return expected


def _race(one: IdentityResolver, two: IdentityResolver) -> None:
    """Each round: ``one`` and ``two`` take their side of the round in two threads at once."""
    errors: list[BaseException] = []
    for r in range(ROUNDS):
        start = threading.Barrier(2)
        threads = [threading.Thread(target=_resolve_all, args=(resolver, msgs, start, errors))
                   for resolver, msgs in zip((one, two), _sides(r), strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []


def test_two_instances_resolving_one_person_at_once_make_one_person(pg_schema_url: str) -> None:
    expected = _serial()
    one, two = IdentityResolver(None, pg_schema_url), IdentityResolver(None, pg_schema_url)
    try:
        _race(one, two)
        assert snapshot(one.index) == expected
        assert snapshot(two.index) == expected  # the same index, read through the other instance
    finally:
        one.close()
        two.close()


def test_two_threads_of_one_instance_share_its_index(state_url: str) -> None:
    """The intake and the mapping worker of one instance: one resolver, two threads."""
    expected = _serial()
    resolver = IdentityResolver(None, state_url)
    try:
        _race(resolver, resolver)
        assert snapshot(resolver.index) == expected
    finally:
        resolver.close()


# -- a 0.4.0 identity.sqlite --------------------------------------------------------------------------
_SCHEMA_0_4_0 = """
CREATE TABLE person (id TEXT PRIMARY KEY, key TEXT NOT NULL, nam TEXT, survivor TEXT);
CREATE TABLE ident (person TEXT NOT NULL, key TEXT NOT NULL, is_key INTEGER NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (person, key));
CREATE UNIQUE INDEX ident_key ON ident(key) WHERE is_key = 1;
CREATE TABLE resource (rtype TEXT NOT NULL, id TEXT NOT NULL, person TEXT NOT NULL, event_ms INTEGER NOT NULL,
  body TEXT NOT NULL, times TEXT, PRIMARY KEY (rtype, id));
CREATE TABLE cluster (person TEXT PRIMARY KEY, digest TEXT NOT NULL, nam INTEGER NOT NULL, flagged INTEGER NOT NULL);
CREATE INDEX cluster_nam ON cluster(digest, nam);
CREATE TABLE dup (id TEXT PRIMARY KEY, a TEXT NOT NULL, b TEXT NOT NULL, active INTEGER NOT NULL);
CREATE TABLE journal (message TEXT NOT NULL, rtype TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (message, rtype, id));
CREATE TABLE provenance (id TEXT PRIMARY KEY, refs TEXT NOT NULL);
"""


def test_an_index_of_0_4_0_keeps_its_rows_and_its_cluster_order(tmp_path: Path) -> None:
    """The members joined z, then a, then m (rowids 1, 2, 3): the earliest stays z, not the first by
    name, and a newcomer joins after them."""
    conn = sqlite3.connect(tmp_path / "identity.sqlite")
    conn.executescript(_SCHEMA_0_4_0)
    conn.executemany("INSERT INTO cluster(person, digest, nam, flagged) VALUES (?, 'd', 0, 0)",
                     [("z",), ("a",), ("m",)])
    conn.execute("INSERT INTO dup(id, a, b, active) VALUES ('f', 'a', 'z', 1)")
    conn.commit()
    conn.close()
    resolver = IdentityResolver(tmp_path)
    try:
        ix = resolver.index
        with ix.transaction():
            assert ix.partner("d", "a", without_nam=False) == "z"
            assert ix.unflagged("d", "q", without_nam=False) == ["z", "a", "m"]
            ix.join("q", "d", False)
            ix.leave("z")
            assert ix.unflagged("d", "a", without_nam=False) == ["m", "q"]
            assert ix.pairs() == [Pair("f", "a", "z", True)]
    finally:
        resolver.close()


def test_an_index_from_before_element_times_gets_them(tmp_path: Path) -> None:
    """0.3 had no ``resource.times``: the column is added, stored rows read with no element times."""
    conn = sqlite3.connect(tmp_path / "identity.sqlite")
    conn.execute("CREATE TABLE resource (rtype TEXT NOT NULL, id TEXT NOT NULL, person TEXT NOT NULL, "
                 "event_ms INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (rtype, id))")
    conn.execute("INSERT INTO resource VALUES ('Encounter', 'e1', 'p', 5, '{}')")
    conn.commit()
    conn.close()
    resolver = IdentityResolver(tmp_path)
    try:
        assert resolver.index.resource("Encounter", "e1") == Stored("Encounter", "e1", "p", 5, {}, {})
        resolver.index.put_resource(Stored("Encounter", "e1", "p", 6, {}, {"status": 6}))
        assert resolver.index.resource("Encounter", "e1") == Stored("Encounter", "e1", "p", 6, {}, {"status": 6})
    finally:
        resolver.close()

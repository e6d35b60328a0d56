"""The identity index: persons, their identifiers, and what was last published for each of them.

One database of the shared state (gateway/eventlog/state/db.py): the SQLite file
``<data_dir>/identity.sqlite`` (mode 0600, WAL) or ``:memory:`` on the embedded defaults, the
PostgreSQL database of ``PIVOT_STATE_URL`` when set (shared by every instance). Schema:
migrations/identity/ (numbered SQL files, applied at open). Tables:

- ``person``: one row per Patient id the resolver ever created; ``survivor`` is NULL while it is
  an active person, else the person it was merged or linked into; ``nam`` its NAM when known;
  ``key`` the ``system|value`` its id derives from.
- ``ident``: the identifiers each person carries (FHIR Identifier JSON); ``is_key`` marks identity
  keys (valid NAM, site record numbers), unique among all persons (a key names one person).
- ``resource``: the last published version of every resource that belongs to a person (Patient
  records, Encounters, Conditions, RelatedPersons, possible-duplicate Flags), with the event time
  (epoch ms of EVN-2, else MSH-7) of the message that last changed it: what stale-write checks
  compare and what a link or a merge re-publishes under the survivor; ``times``: the event time of
  each of its elements (units, mappings/merge.py) as last said by any message, a ``""`` included,
  what per-element survivorship compares (gateway/identity/README.md, "Survivorship").
- ``cluster``: per active person with a complete demographic key, the key's digest (never names
  or dates), whether it has a NAM, whether its possible-duplicate Flag is open, and ``seq`` its
  join order (kept on updates): look-alikes (same digest) form one cluster.
- ``dup``: possible-duplicate pairs (the Flag id, both persons, active or resolved).
- ``journal``: per source message (sender|MSH-10), the resources a link or merge re-published, so
  that mapping the same message again re-publishes their current versions (idempotent output).
- ``provenance``: per Provenance id (one per message), the references its targets were rewritten
  with when the message was first resolved (usually ``{}``): a Provenance is history, and a replay
  of the message must not re-point it at what the person became later.

Every call happens inside :meth:`IdentityIndex.transaction`: one database transaction under the
lock ``identity`` (SQLite: its one writer; PostgreSQL: an advisory lock every instance takes), so
a message is resolved all or nothing, a refused message (MapError) leaves no trace, and two
instances resolving messages of the same person run one after the other. Text is ordered in
Python, never by ``ORDER BY`` on text (PostgreSQL's collation is not SQLite's byte order).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway.eventlog.state.db import Row, StateDb, Tx, open_state
from gateway.eventlog.state.identity_rows import Pair, Person, Seen, Stored, dump, dump_times, pairs_of

JSON = dict[str, Any]
FILE_NAME = "identity.sqlite"
SCHEMA = "identity"
LOCK = "identity"
_TABLES = ("person", "ident", "resource", "cluster", "dup", "journal", "provenance")
__all__ = ["FILE_NAME", "LOCK", "SCHEMA", "IdentityIndex", "Pair", "Person", "Stored", "open_index"]


def _upgrade_0_3(db: StateDb) -> None:
    """An identity.sqlite from before element times (0.3): its ``resource`` rows get ``times``
    (they start from event_ms). The migrations keep existing tables as they are."""
    if db.engine != "sqlite":
        return
    with db.transaction(lock=LOCK) as tx:
        columns = {str(r[0]) for r in tx.execute("SELECT name FROM pragma_table_info('resource')")}
        if "times" not in columns:
            tx.execute("ALTER TABLE resource ADD COLUMN times TEXT")


def open_index(data_dir: Path | None, state_url: str = "") -> IdentityIndex:
    """The index in the PostgreSQL database ``state_url`` when set, else in
    ``data_dir/identity.sqlite`` (``:memory:`` when ``data_dir`` is None); migrations applied."""
    db = open_state(state_url, data_dir, FILE_NAME, SCHEMA)
    try:
        _upgrade_0_3(db)
    except BaseException:
        db.close()
        raise
    return IdentityIndex(db)


_CHUNK = 200  # placeholders per IN list
_PROBES = 100  # SELECTs per UNION ALL (SQLite allows 500)
_PRELOAD = "SELECT rtype, id, person, event_ms, body, times FROM resource WHERE rtype = ? AND id = ?"
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _atomic(method: Callable[Concatenate[IdentityIndex, _P], _R]) -> Callable[Concatenate[IdentityIndex, _P], _R]:
    """``method`` in the caller's :meth:`IdentityIndex.transaction`, else in one of its own."""

    def run(self: IdentityIndex, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._owner == threading.get_ident():
            return method(self, *args, **kwargs)
        with self.transaction():
            return method(self, *args, **kwargs)

    functools.update_wrapper(run, method)
    return run


class IdentityIndex:
    """Typed access to the index tables (see module docstring) over one :class:`StateDb`.
    Thread-safe: a call outside :meth:`transaction` is a transaction of its own. Inside one, rows
    already read are not read again (one round trip each on PostgreSQL), unchanged rows are not
    written, and writes go with the next statement (:meth:`_write`), in order, before the commit."""

    def __init__(self, db: StateDb) -> None:
        self.db = db
        self._tx: Tx | None = None
        self._seen = Seen()
        self._owner: int | None = None  # the thread inside transaction() (it holds the lock)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[IdentityIndex]:
        """All or nothing, one caller at a time (across instances on PostgreSQL)."""
        if self._owner == threading.get_ident():  # nested: the outer transaction's
            yield self
            return
        with self.db.transaction(lock=LOCK) as tx:
            self._tx, self._seen, self._owner = tx, Seen(), threading.get_ident()
            try:
                yield self
                self._flush()
            finally:
                self._owner, self._tx = None, None

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One statement of the current transaction (an :func:`_atomic` method's), after the
        writes :meth:`_write` held back (statements run in the order they were asked for)."""
        assert self._tx is not None
        assert self._owner == threading.get_ident()
        if self._seen.pending:
            self._flush()
        return self._tx.execute(sql, params)

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        """A write without result, sent with the next statement: consecutive writes of the same
        statement go as one ``executemany`` (one call; one round trip on PostgreSQL)."""
        self._seen.pending.append((sql, params))

    def _flush(self) -> None:
        assert self._tx is not None
        pending, self._seen.pending = self._seen.pending, []
        at = 0
        while at < len(pending):
            sql, end = pending[at][0], at + 1
            while end < len(pending) and pending[end][0] == sql:
                end += 1
            if end - at == 1:
                self._tx.execute(sql, pending[at][1])
            else:
                self._tx.executemany(sql, [params for _sql, params in pending[at:end]])
            at = end

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        self.db.close()

    @_atomic
    def clear(self) -> None:
        """Empty every table (before a rebuild)."""
        for table in _TABLES:
            self._rows(f"DELETE FROM {table}")  # noqa: S608 (fixed table names)
        self._seen = Seen()

    # -- persons ---------------------------------------------------------------------------------
    @_atomic
    def person(self, pid: str) -> Person | None:
        persons = self._seen.persons
        if pid not in persons:
            row = self._one("SELECT key, nam, survivor FROM person WHERE id = ?", (pid,))
            persons[pid] = None if row is None else Person(pid, row[0], row[1], row[2])
        return persons[pid]

    @_atomic
    def final(self, pid: str) -> str:
        """The active person ``pid`` ends up in (itself when active or unknown)."""
        seen = {pid}
        current = self.person(pid)
        while current is not None and current.survivor is not None and current.survivor not in seen:
            seen.add(current.survivor)
            pid = current.survivor
            current = self.person(pid)
        return pid

    @_atomic
    def add_person(self, pid: str, key: str, nam: str | None, survivor: str | None = None) -> None:
        """A new person (nothing when ``pid`` exists): one statement either way when not read yet."""
        seen = self._seen
        if seen.persons.get(pid) is not None:
            return
        if not self._rows("INSERT INTO person(id, key, nam, survivor) VALUES (?,?,?,?) ON CONFLICT (id) DO NOTHING "
                          "RETURNING id", (pid, key, nam, survivor)):
            seen.persons.pop(pid, None)  # it existed: read it when asked
            return
        # new: nothing can belong to it yet (rows name persons that exist; only clear() deletes persons)
        seen.persons[pid] = Person(pid, key, nam, survivor)
        seen.idents[pid], seen.owned[pid], seen.members[pid] = {}, set(), None

    @_atomic
    def retire(self, pid: str, survivor: str) -> None:
        """``pid`` (and every person already merged into it) now ends up in ``survivor``."""
        self._rows("UPDATE person SET survivor = ? WHERE id = ? OR survivor = ?", (survivor, pid, pid))
        persons = self._seen.persons
        for known, row in list(persons.items()):
            if row is not None and pid in (row.id, row.survivor):
                persons[known] = Person(row.id, row.key, row.nam, survivor)

    @_atomic
    def active_persons(self) -> int:
        return int(self._rows("SELECT count(*) FROM person WHERE survivor IS NULL")[0][0])

    # -- identifiers -----------------------------------------------------------------------------
    @_atomic
    def persons_of_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """The person each identity key of ``keys`` names (keys naming nobody are left out)."""
        known = self._seen.keys
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        for at in range(0, len(missing), _CHUNK):
            part = missing[at:at + _CHUNK]
            marks = ",".join("?" * len(part))
            found: dict[str, str] = {}
            sql = ("SELECT i.key, i.person, p.key, p.nam, p.survivor FROM ident i JOIN person p "  # noqa: S608
                   f"ON p.id = i.person WHERE i.is_key = 1 AND i.key IN ({marks})")
            for k, pid, pkey, nam, survivor in self._rows(sql, part):  # the persons too: read next anyway
                found[str(k)] = str(pid)
                self._seen.persons.setdefault(str(pid), Person(str(pid), pkey, nam, survivor))
            known.update({k: found.get(k) for k in part})
        return {k: p for k in keys if (p := known[k]) is not None}

    def person_of_key(self, key: str) -> str | None:
        return self.persons_of_keys([key]).get(key)

    def _idents(self, person: str) -> dict[str, tuple[bool, str]]:
        rows = self._seen.idents.get(person)
        if rows is None:
            rows = {str(k): (bool(is_key), str(body)) for k, is_key, body in
                    self._rows("SELECT key, is_key, body FROM ident WHERE person = ?", (person,))}
            self._seen.idents[person] = rows
        return rows

    @_atomic
    def identifiers(self, person: str) -> list[tuple[str, bool, JSON]]:
        rows = self._idents(person)
        return [(k, rows[k][0], json.loads(rows[k][1])) for k in sorted(rows)]

    @_atomic
    def identifier(self, person: str, key: str) -> tuple[bool, JSON] | None:
        row = self._idents(person).get(key)
        return None if row is None else (row[0], json.loads(row[1]))

    @_atomic
    def put_identifier(self, person: str, key: str, is_key: bool, body: JSON) -> None:
        """Add or rewrite one identifier of ``person`` (once a key, it stays a key); no write when
        the stored row is the same."""
        text = dump(body)
        rows = self._seen.idents.get(person)
        old = rows.get(key) if rows is not None else None
        row = (is_key or (old is not None and old[0]), text)
        if is_key:
            self._seen.keys[key] = person
        if old == row:
            return
        self._write(
            "INSERT INTO ident(person, key, is_key, body) VALUES (?,?,?,?) ON CONFLICT (person, key) DO UPDATE "
            "SET is_key = CASE WHEN excluded.is_key > ident.is_key THEN excluded.is_key ELSE ident.is_key END, "
            "body = excluded.body", (person, key, int(is_key), text))
        if rows is not None:
            rows[key] = row

    @_atomic
    def move_identifiers(self, src: str, dst: str) -> None:
        """Every identifier of ``src`` now belongs to ``dst`` (those ``dst`` already has are kept once)."""
        moving = self.identifiers(src)
        self._rows("DELETE FROM ident WHERE person = ?", (src,))
        self._seen.idents[src] = {}
        for key, is_key, body in moving:
            if self._seen.keys.get(key) == src:
                del self._seen.keys[key]
            existing = self.identifier(dst, key)
            self.put_identifier(dst, key, is_key or bool(existing and existing[0]), existing[1] if existing else body)

    # -- published resources ---------------------------------------------------------------------
    @_atomic
    def preload(self, keys: Sequence[tuple[str, str]]) -> None:
        """Read the resources ``keys`` (type, id) in one query: what :meth:`resource` then returns."""
        known = self._seen.resources
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        for at in range(0, len(missing), _PROBES):
            part = missing[at:at + _PROBES]  # one primary-key probe per key (two IN lists probed every
            # type with every id; an OR of pairs or row values scan the table)
            rows = self._rows(" UNION ALL ".join([_PRELOAD] * len(part)), [v for key in part for v in key])
            found = {(str(t), str(i)): (str(p), int(ms), str(b), t2) for t, i, p, ms, b, t2 in rows}
            known.update({k: found.get(k) for k in part})

    @_atomic
    def resource(self, rtype: str, rid: str) -> Stored | None:
        if (rtype, rid) not in self._seen.resources:
            self.preload([(rtype, rid)])
        row = self._seen.resources[(rtype, rid)]
        if row is None:
            return None
        return Stored(rtype, rid, row[0], row[1], json.loads(row[2]), json.loads(row[3]) if row[3] else {})

    def _owned(self, person: str) -> list[tuple[str, str]]:
        """(type, id) of every resource row of ``person``, sorted: read once per transaction (with
        the rows), then kept current by :meth:`put_resource`."""
        keys = self._seen.owned.get(person)
        if keys is None:
            known, keys = self._seen.resources, set()
            for t, i, ms, b, times in self._rows("SELECT rtype, id, event_ms, body, times FROM resource "
                                                 "WHERE person = ?", (person,)):
                key = (str(t), str(i))
                keys.add(key)
                known.setdefault(key, (person, int(ms), str(b), times))
            self._seen.owned[person] = keys
        return sorted(keys)

    @_atomic
    def resources_of(self, person: str, rtype: str | None = None) -> list[Stored]:
        """The person's resources (of one type), by type and id (sorted here, never in SQL)."""
        out = []
        for key in self._owned(person):
            row = self._seen.resources.get(key)
            if row is not None and (rtype is None or key[0] == rtype):
                out.append(Stored(key[0], key[1], person, row[1], json.loads(row[2])))
        return out

    @_atomic
    def record_ids(self, person: str, rtype: str = "Patient") -> list[str]:
        """Ids of the ``rtype`` resources of ``person``, sorted, none decoded (Patient: its records,
        itself and the retired ones)."""
        return [rid for t, rid in self._owned(person) if t == rtype]

    @_atomic
    def put_resource(self, stored: Stored) -> None:
        """Write ``stored``; its element times too, unless ``times`` is None (kept as stored). No
        write when the stored row is the same."""
        key, seen = (stored.rtype, stored.id), self._seen
        if key not in seen.resources:
            self.preload([key])  # its owner and times (every caller has read it already)
        old = seen.resources[key]
        times = dump_times(stored.times) if stored.times is not None else None
        kept = times if times is not None or old is None else old[3]
        row = (stored.person, stored.event_ms, dump(stored.body), kept)
        if row == old:
            return
        self._write(
            "INSERT INTO resource(rtype, id, person, event_ms, body, times) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (rtype, id) DO UPDATE SET person = excluded.person, event_ms = excluded.event_ms, "
            "body = excluded.body, times = coalesce(excluded.times, resource.times)",
            (stored.rtype, stored.id, stored.person, stored.event_ms, row[2], times))
        seen.resources[key] = row
        if old is not None and old[0] != stored.person and old[0] in seen.owned:
            seen.owned[old[0]].discard(key)
        if stored.person in seen.owned:
            seen.owned[stored.person].add(key)

    # -- demographic keys and possible duplicates ------------------------------------------------
    @_atomic
    def member(self, person: str) -> tuple[str, bool, bool] | None:
        """(digest, has a NAM, Flag open) of a cluster member, None when in no cluster."""
        members = self._seen.members
        if person not in members:
            row = self._one("SELECT digest, nam, flagged FROM cluster WHERE person = ?", (person,))
            members[person] = None if row is None else (str(row[0]), bool(row[1]), bool(row[2]))
        return members[person]

    @_atomic
    def join(self, person: str, digest: str, nam: bool) -> None:
        """``person`` is in the cluster ``digest``; its join order ``seq`` (max + 1 for a newcomer,
        what SQLite's rowid was) is kept on updates. Writers are serialised by the lock."""
        self._rows(
            "INSERT INTO cluster(person, digest, nam, flagged, seq) "
            "VALUES (?,?,?,0,(SELECT coalesce(max(seq), 0) + 1 FROM cluster)) ON CONFLICT (person) DO UPDATE "
            "SET nam = excluded.nam, flagged = CASE WHEN cluster.digest = excluded.digest THEN cluster.flagged "
            "ELSE 0 END, digest = excluded.digest", (person, digest, int(nam)))
        members = self._seen.members
        if person in members:
            old = members[person]
            members[person] = (digest, nam, old is not None and old[0] == digest and old[2])

    @_atomic
    def leave(self, person: str) -> None:
        self._rows("DELETE FROM cluster WHERE person = ?", (person,))
        self._seen.members[person] = None

    @_atomic
    def set_flagged(self, person: str, flagged: bool) -> None:
        self._rows("UPDATE cluster SET flagged = ? WHERE person = ?", (int(flagged), person))
        old = self._seen.members.get(person)
        if old is not None:
            self._seen.members[person] = (old[0], old[1], flagged)

    @_atomic
    def partner(self, digest: str, person: str, *, without_nam: bool) -> str | None:
        """The earliest other member of the cluster (without a NAM, or any): two index probes."""
        found: list[tuple[int, str]] = []
        for nam in (0,) if without_nam else (0, 1):
            row = self._one("SELECT seq, person FROM cluster WHERE digest = ? AND nam = ? AND person != ? "
                            "ORDER BY seq LIMIT 1", (digest, nam, person))
            if row is not None:
                found.append((int(row[0]), str(row[1])))
        return min(found)[1] if found else None

    @_atomic
    def unflagged(self, digest: str, person: str, *, without_nam: bool) -> list[str]:
        """Members of the cluster (without a NAM, or any) other than ``person`` whose Flag is not open."""
        rows = self._rows("SELECT person, nam FROM cluster WHERE digest = ? AND flagged = 0 AND person != ? "
                          "ORDER BY seq", (digest, person))
        return [str(p) for p, nam in rows if not (without_nam and nam)]

    @_atomic
    def flags_naming(self, person: str) -> list[Pair]:
        """Open possible-duplicate Flags whose other record is ``person``."""
        return pairs_of(self._rows("SELECT id, a, b, active FROM dup WHERE b = ? AND active = 1", (person,)))

    @_atomic
    def pair(self, pair_id: str) -> Pair | None:
        found = pairs_of(self._rows("SELECT id, a, b, active FROM dup WHERE id = ?", (pair_id,)))
        return found[0] if found else None

    @_atomic
    def put_pair(self, pair: Pair) -> None:
        self._rows("INSERT INTO dup(id, a, b, active) VALUES (?,?,?,?) ON CONFLICT (id) DO UPDATE "
                   "SET a = excluded.a, b = excluded.b, active = excluded.active",
                   (pair.id, pair.a, pair.b, int(pair.active)))

    @_atomic
    def pairs(self, *, include_resolved: bool = False) -> list[Pair]:
        rows = self._rows("SELECT id, a, b, active FROM dup WHERE active >= ?", (0 if include_resolved else 1,))
        return pairs_of(rows)

    # -- the resolution clock (migrations/identity/0004) --------------------------------------------
    @_atomic
    def tick(self) -> int:
        """The next resolution number: increasing in the order resolutions commit, on every instance."""
        row = self._one("UPDATE clock SET n = n + 1 WHERE name = 'resolved' RETURNING n")
        assert row is not None  # the migration inserts the row
        return int(row[0])

    # -- provenance targets as first resolved ----------------------------------------------------
    @_atomic
    def provenance_refs(self, prov_id: str) -> dict[str, str] | None:
        row = self._one("SELECT refs FROM provenance WHERE id = ?", (prov_id,))
        return None if row is None else dict(json.loads(row[0]))

    @_atomic
    def first_provenance_refs(self, prov_id: str, refs: dict[str, str]) -> tuple[dict[str, str], bool]:
        """The refs stored for ``prov_id``, ``refs`` stored first when there were none (one
        statement when the message is resolved the first time), and whether they were stored now:
        the index had never seen the Provenance (one per message, written with its journal)."""
        text = json.dumps(refs, sort_keys=True, separators=(",", ":"))
        if self._rows("INSERT INTO provenance(id, refs) VALUES (?, ?) ON CONFLICT (id) DO NOTHING RETURNING id",
                      (prov_id, text)):
            return dict(refs), True
        return self.provenance_refs(prov_id) or {}, False

    # -- journal of re-published resources -------------------------------------------------------
    @_atomic
    def journal(self, message: str) -> list[tuple[str, str]]:
        rows = self._rows("SELECT rtype, id FROM journal WHERE message = ?", (message,))
        return sorted((str(t), str(i)) for t, i in rows)

    @_atomic
    def add_journal(self, message: str, rtype: str, rid: str) -> None:
        self._rows("INSERT INTO journal(message, rtype, id) VALUES (?,?,?) ON CONFLICT (message, rtype, id) DO NOTHING",
                   (message, rtype, rid))


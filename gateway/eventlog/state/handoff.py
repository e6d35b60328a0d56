"""The intake's mapping results handed to the mapping worker through the shared state.

The intake maps and resolves each message before acknowledging it; the mapping worker must publish
exactly that result and never resolve the same message a second time (gateway.intake). In one
process on the embedded defaults memory carries it, spilling to the handoff file when the intake
runs far ahead of the worker (``SpillMapCache``). When the MLLP
listener runs in a process of its own (gateway.listener), or whenever ``PIVOT_STATE_URL`` is set
(the record may be taken by another instance's mapping worker), the result goes through the
``handoff`` table instead (``handoff.sqlite`` under PIVOT_DATA_DIR, or PostgreSQL): written before
the raw message is appended to ``hl7v2.in`` (so it is there when a worker reads the record), read
by the worker.

Batches go in one transaction each way: ``pivot ingest`` hands a batch's results over with
``put_many`` before the batch's one append, and the mapping worker takes a polled batch's with
``take_many`` (an ``IN`` list of up to 500 keys per statement), not one transaction per message
(issue #14: during a ``pivot ingest``, py-spy found the mapping worker's thread in those
per-message transactions in ~26 % of its wall-time samples, mostly waiting for the file's write
lock, which the ingest's own per-message puts held).

Taking a result does not delete it: ``pop`` marks it taken and returns it; taken results are
removed :data:`TAKEN_KEEP_S` later. A worker killed after taking a result but before committing its
batch leaves the record uncommitted; whoever reads it again (the same instance restarted, or the
instance the partition moved to) finds the same result. A result never taken (an append that
failed, a crash between the two) is removed after a day. The table holds mapped resources, like
the FHIR store: the SQLite file is 0600 under PIVOT_DATA_DIR.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from gateway.envelope import dumps
from gateway.eventlog.state.db import StateDb, StateUnavailable, open_state
from gateway.intake import MapCache
from mappings import MapResult

log = logging.getLogger("pivot.handoff")
FILE_NAME = "handoff.sqlite"
SCHEMA = "handoff"
KEEP_S = 86_400
TAKEN_KEEP_S = 300
_PRUNE_EVERY = 1_000
_PUT = ("INSERT INTO handoff(key, body, at, taken) VALUES (?,?,?,NULL) ON CONFLICT (key) "
        "DO UPDATE SET body = excluded.body, at = excluded.at, taken = NULL")
_IN_CHUNK = 500  # keys per "IN (...)" (SQLite allows 32,766 parameters, PostgreSQL 65,535)


_FORMAT = "2"  # first line of a body in the format of :func:`encode`; older bodies are one JSON object
_NOT_CARRIED = ("resources", "warnings")  # warnings: moved out by the pipeline before the handoff


Texts = list[str] | None
"""Each resource's compact JSON (``gateway.envelope.dumps``) as the handoff carried it, or None."""


def encode(result: MapResult) -> str:
    """The handoff body of ``result``: lines ``2``, the JSON of its other fields, then one line per
    resource, its compact JSON (no raw newline in it: JSON escapes it in strings)."""
    meta = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in _NOT_CARRIED}
    return "\n".join([_FORMAT, dumps(meta), *(dumps(res) for res in result.resources)])


def decode(body: str) -> tuple[MapResult, Texts]:
    """The result of a handoff body and its resources' texts (:func:`encode`'s format; a body of
    one JSON object, as written before 0.6.1, gives no texts). One parse: the lines after the
    first, joined by commas, are one JSON array (the other fields, then each resource)."""
    if not body.startswith(_FORMAT + "\n"):
        return MapResult(**json.loads(body)), None
    lines = body.split("\n")
    meta, *resources = json.loads(f"[{','.join(lines[1:])}]")
    return MapResult(resources=resources, **meta), lines[2:]


class SharedMapCache(MapCache):
    """``MapCache`` kept in the shared state (see module docstring)."""

    def __init__(self, db: StateDb) -> None:
        super().__init__()
        self.db = db
        self._count_lock = threading.Lock()
        self._writes = 0

    def put(self, key: str, result: MapResult) -> None:
        """Hand a result over. The state unreachable: logged, not raised (the worker, missing it,
        maps and resolves the message itself; the intake's append then decides the ACK)."""
        self.put_many([(key, result)])

    def put_many(self, items: Sequence[tuple[str, MapResult]]) -> None:
        """``put`` of each (key, result) in one transaction (``pivot ingest``'s batches)."""
        if not items:
            return
        at = int(time.time())
        rows = [(key, encode(result), at) for key, result in items]
        try:
            if len(rows) == 1:
                self.db.run(_PUT, rows[0])
            else:
                with self.db.transaction() as tx:
                    tx.executemany(_PUT, rows)
        except StateUnavailable:
            log.warning("handoff unavailable: %d result(s) not handed over", len(rows))
            return
        self._maybe_prune(len(rows))

    def pop(self, key: str) -> MapResult | None:
        """The result of ``key``, marked taken (kept TAKEN_KEEP_S for a worker that dies before its
        commit). None when there is none (or the state is unreachable: the worker resolves again)."""
        return self.take(key)[0]

    def take(self, key: str) -> tuple[MapResult | None, Texts]:
        """:meth:`pop` with the resources' texts (each resource's compact JSON as handed over)."""
        return self.take_many([key]).get(key, (None, None))

    def take_many(self, keys: Sequence[str]) -> dict[str, tuple[MapResult, Texts]]:
        """:meth:`take` of each key in one transaction (a mapping worker's batch): the results found.
        The state unreachable: none (the worker resolves those messages itself, as on a miss)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        now, found = int(time.time()), dict[str, str]()
        chunks = [wanted[start:start + _IN_CHUNK] for start in range(0, len(wanted), _IN_CHUNK)]
        try:
            with self.db.transaction() if len(chunks) > 1 else contextlib.nullcontext():
                for chunk in chunks:  # one statement: its own transaction (PostgreSQL: one round trip)
                    marks = ",".join("?" * len(chunk))
                    sql = f"UPDATE handoff SET taken = ? WHERE key IN ({marks}) RETURNING key, body"  # noqa: S608
                    found.update((str(key), str(body)) for key, body in self.db.run(sql, [now, *chunk]))
        except StateUnavailable:
            log.warning("handoff unavailable: %d result(s) not read", len(wanted))
            return {}
        self._maybe_prune(len(wanted))
        out: dict[str, tuple[MapResult, Texts]] = {}
        for key, body in found.items():
            try:
                out[key] = decode(body)
            except (ValueError, TypeError):  # a damaged body: the worker maps and resolves that message itself
                log.warning("handoff body unreadable key_len=%d size=%d", len(key), len(body))
        return out

    def prune(self, now: int | None = None) -> int:
        """Remove taken results older than TAKEN_KEEP_S and untaken ones older than KEEP_S."""
        now = int(time.time()) if now is None else now
        gone = self.db.run("DELETE FROM handoff WHERE taken < ? OR at < ? RETURNING key",
                           (now - TAKEN_KEEP_S, now - KEEP_S))
        return len(gone)

    def _maybe_prune(self, writes: int = 1) -> None:
        with self._count_lock:
            due = (self._writes + writes) // _PRUNE_EVERY > self._writes // _PRUNE_EVERY
            self._writes += writes
        if due:
            try:
                self.prune()
            except StateUnavailable:
                log.warning("handoff prune skipped: state unavailable")

    def close(self) -> None:
        self.db.close()


MEMORY_ITEMS = 2_048
"""Results :class:`SpillMapCache` keeps in memory (≤ ~70 KB each: ≤ ~140 MB); beyond, the spill file."""


class SpillMapCache(MapCache):
    """The handoff of one process (embedded defaults, mapping worker in the intake's process).

    Up to :data:`MEMORY_ITEMS` results in memory; when the intake runs further ahead of the mapping
    worker (a backfill ingested faster than it is mapped, a worker started later), the next results
    go to ``handoff.sqlite`` under the data dir (a :class:`SharedMapCache`, same rules) instead of
    evicting older ones: the worker finds every result, memory stays bounded whatever the backlog.
    The file holds the backlog only (~12 KB of JSON per ER message; taken rows are pruned
    TAKEN_KEEP_S later); results a previous run spilled and no worker took are found too."""

    def __init__(self, data_dir: Path, memory_items: int | None = None) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.memory_items = MEMORY_ITEMS if memory_items is None else memory_items
        self._memory: dict[str, MapResult] = {}
        self._memory_lock = threading.Lock()
        self._spill: SharedMapCache | None = None
        self._spill_lock = threading.Lock()
        self.spilled = 0  # results written to the file by this process
        if (data_dir / FILE_NAME).exists():
            self._spill_cache()

    def put(self, key: str, result: MapResult) -> None:
        self.put_many([(key, result)])

    def put_many(self, items: Sequence[tuple[str, MapResult]]) -> None:
        """``put`` of each: memory while there is room, the rest to the file in one transaction."""
        spilled: list[tuple[str, MapResult]] = []
        with self._memory_lock:
            for key, result in items:
                if key in self._memory or len(self._memory) < self.memory_items:
                    self._memory[key] = result
                else:
                    spilled.append((key, result))
        if spilled:
            self._spill_cache().put_many(spilled)
            self.spilled += len(spilled)

    def pop(self, key: str) -> MapResult | None:
        return self.take(key)[0]

    def take(self, key: str) -> tuple[MapResult | None, Texts]:
        """:meth:`pop` with the resources' texts when the result was spilled."""
        return self.take_many([key]).get(key, (None, None))

    def take_many(self, keys: Sequence[str]) -> dict[str, tuple[MapResult, Texts]]:
        """From memory, then what is left from the file (one transaction)."""
        out: dict[str, tuple[MapResult, Texts]] = {}
        with self._memory_lock:
            for key in keys:
                result = self._memory.pop(key, None)
                if result is not None:
                    out[key] = (result, None)
        spill = self._spill
        rest = [key for key in keys if key not in out]
        if spill is not None and rest:
            out.update(spill.take_many(rest))
        return out

    def _spill_cache(self) -> SharedMapCache:
        with self._spill_lock:
            if self._spill is None:
                self._spill = SharedMapCache(open_state("", self.data_dir, FILE_NAME, SCHEMA))
            return self._spill

    def close(self) -> None:
        with self._spill_lock:
            if self._spill is not None:
                self._spill.close()


def open_handoff(state_url: str, data_dir: Path | None) -> SharedMapCache:
    """The handoff of these settings: ``data_dir/handoff.sqlite``, or PostgreSQL when ``state_url`` is set."""
    return SharedMapCache(open_state(state_url, data_dir, FILE_NAME, SCHEMA))

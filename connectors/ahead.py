"""Worker processes for the pure steps of ``pivot ingest --jobs N`` (issue #14: a year of history).

The pure steps of the spine — decode → supported → structure → map + validate (``Pipeline.ahead``,
gateway/pipeline.py) — need no log, store or identity file: :class:`AheadPool` runs them for whole
intake batches in ``jobs`` worker processes, a few batches ahead of the intake, and hands each
batch back with its :class:`gateway.pipeline.Ahead` results in input order (an ordered ``imap``
with a bounded window: the input is never read further than ``window`` batches ahead, so memory
stays bounded whatever the file size). The intake then runs identity, dedupe and the batched
durable commit in this process, in order (``Intake.receive_many(items, ahead)``).

The workers start from a fork server (or are spawned where there is none): fresh processes that
hold none of the parent's open files (log, store, identity, handoff) and load the sender profiles
and identifier systems from the same settings themselves. Raw bytes go in, picklable results out.
"""

from __future__ import annotations

import gc
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import AsyncResult
from pathlib import Path
from types import TracebackType

from connectors.base import Origin
from gateway.pipeline import Ahead, Pipeline
from mappings import IdentifierSystems, Profiles

Batch = list[tuple[bytes, Origin]]
GC_THRESHOLDS = (20_000, 50, 1000)
"""A bulk run allocates millions of short-lived objects (parsed segments, mapped resources, unpickled
results): collecting every 700 allocations (Python's default) cost ~0.4 ms per message in unpickling alone."""
_pipeline: list[Pipeline] = []  # this worker's pipeline (set once by _start)


@contextmanager
def bulk_gc() -> Iterator[None]:
    """For a bulk run (``pivot ingest`` and its workers): what is loaded so far is never collected
    (``gc.freeze``), and young objects are collected every :data:`GC_THRESHOLDS` allocations; both
    undone at the end (``main`` may run in a longer-lived process: the tests)."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _start(sender_profiles: Path | None, identifier_systems: Path | None, timezone: str) -> None:
    _pipeline.append(Pipeline(Profiles.load(sender_profiles, timezone), IdentifierSystems.load(identifier_systems),
                              identity=None))
    gc.freeze()  # a worker process: for its whole life
    gc.set_threshold(*GC_THRESHOLDS)


def _ahead(raws: list[bytes]) -> list[Ahead]:
    pipeline = _pipeline[0]
    return [pipeline.ahead(raw) for raw in raws]


class AheadPool:
    """``jobs`` worker processes running ``Pipeline.ahead`` over batches, answers in order."""

    def __init__(self, jobs: int, sender_profiles: Path | None, identifier_systems: Path | None,
                 timezone: str, *, window: int = 0) -> None:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload([__name__])
        self.jobs = jobs
        self.window = window or 2 * jobs
        self._pool = ctx.Pool(jobs, initializer=_start, initargs=(sender_profiles, identifier_systems, timezone))

    def ordered(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, list[Ahead]]]:
        """Each batch with ``Pipeline.ahead`` of each of its messages, in input order; at most
        ``window`` batches submitted and not yet handed back."""
        pending: deque[tuple[Batch, AsyncResult[list[Ahead]]]] = deque()
        for items in batches:
            pending.append((items, self._pool.apply_async(_ahead, ([raw for raw, _origin in items],))))
            if len(pending) >= self.window:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    def __enter__(self) -> AheadPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # an error (or ^C): the batches still in the workers are of no use
            self._pool.terminate()
            self._pool.join()

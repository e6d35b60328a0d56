"""Files: ``pivot ingest FILE…`` feeds files of messages, FHS/BHS batches or MLLP captures to the intake.

Each file (or standard input) is read as a stream, :data:`CHUNK` bytes at a time, and split into
messages without decoding (:func:`stream_messages`: :func:`gateway.hl7v2.batch.split_messages` of
pieces cut only where it would cut anyway), so memory holds a chunk and a batch whatever the size.
Each message goes through the same intake as MLLP and HTTP (origin ``file``, peer ``<path>#<n>``),
so a refused message is a dead letter with its reason like any other. The summary counts accepted,
refused (AE/AR) and duplicate messages; a progress bar (rich) shows the bytes read.

Messages go to the intake in batches of :data:`BATCH` (in file order): a receiver with
``receive_many`` (:class:`BatchReceiver`) commits each batch's raw messages in one transaction —
one fsync per batch instead of one per message — and answers only once that commit is durable,
so a message is counted accepted only once it is stored; a receiver without it gets one
``receive`` per message. The summary is printed once the last batch is durable. The gateway's
intake appends what it receives in batches to ``hl7v2.bulk``, the bulk lane: files are history, and
the live ER traffic in ``hl7v2.in`` is mapped first (gateway/eventlog/worker.py ``Turn``).

With a :class:`connectors.ahead.AheadPool` (``pivot ingest --jobs N``), the pure steps of each batch
(decode → supported → structure → map + validate) run in worker processes, a few batches ahead,
and the batch then goes to ``receive_many`` with them, in file order: identity, dedupe and the
durable commit stay in this process, in order, so the replies are those of a run without a pool.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from connectors.base import Origin, Receiver, Reply
from gateway.errors import GatewayError
from gateway.hl7v2.batch import _BOUNDARY, END_BLOCK, START_BLOCK, split_messages
from gateway.pipeline import Ahead

if TYPE_CHECKING:
    from connectors.ahead import AheadPool

log = logging.getLogger("pivot.files")
TRANSPORT = "file"
BATCH = 256
"""Messages per intake batch: one durable commit (fsync) each when the receiver takes batches."""
CHUNK = 1 << 20
"""Bytes read at a time from a file or standard input."""
STDIN = Path("-")


class BatchReceiver(Receiver, Protocol):
    """A receiver that takes a batch: the replies of ``receive`` for each message, in order, the
    batch's records committed together (one fsync) before any reply is returned; an AA only for a
    message that commit made durable (a failed commit answers AR, transient, for the batch)."""

    def receive_many(self, items: Sequence[tuple[bytes, Origin]]) -> list[Reply]: ...


@dataclass(slots=True)
class IngestSummary:
    """Outcome counts of one ingest run."""

    files: int = 0
    accepted: int = 0
    refused: int = 0
    duplicates: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.accepted + self.refused + self.duplicates

    def line(self) -> str:
        return (f"{self.files} file(s), {self.total} message(s): {self.accepted} accepted, "
                f"{self.refused} refused, {self.duplicates} duplicate(s)")


class FileConnector:
    """The file transport: ``start()`` ingests every file once; ``summary`` holds the counts."""

    name = "file"

    def __init__(self, paths: list[Path], receiver: Receiver, *, progress: bool = False) -> None:
        self.paths = paths
        self.receiver = receiver
        self.progress = progress
        self.summary = IngestSummary()

    async def start(self) -> None:
        self.summary = await asyncio.to_thread(ingest_files, self.paths, self.receiver, progress=self.progress)

    async def stop(self) -> None:
        return None


def ingest_files(paths: list[Path], receiver: Receiver, *, progress: bool = True,
                 print_summary: bool = True, pool: AheadPool | None = None) -> IngestSummary:
    """Feed every message of ``paths`` (``-``: standard input) to ``receiver`` in order, streamed;
    ``pool``: the pure steps run ahead in its worker processes. Unreadable files raise GatewayError."""
    summary = IngestSummary(files=len(paths))
    from rich.progress import Progress

    sizes = [None if path == STDIN else _size(path) for path in paths]
    total = None if None in sizes else sum(s or 0 for s in sizes)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("ingesting", total=total)
        for path in paths:
            for items, ahead in _ahead(pool, _batches(path)):
                for (_raw, origin), reply in zip(items, _receive(receiver, items, ahead), strict=True):
                    _count(summary, origin, reply)
                bar.advance(task, sum(len(raw) for raw, _origin in items))
    if print_summary:
        print(summary.line())
    return summary


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise GatewayError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _batches(path: Path) -> Iterator[list[tuple[bytes, Origin]]]:
    """The messages of ``path`` in batches of BATCH, each with its origin (``<name>#<n>``), streamed."""
    name = "stdin" if path == STDIN else path.name
    batch: list[tuple[bytes, Origin]] = []
    for n, raw in enumerate(_read(path), start=1):
        batch.append((raw, Origin(TRANSPORT, f"{name}#{n}")))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _read(path: Path) -> Iterator[bytes]:
    if path == STDIN:
        yield from stream_messages(sys.stdin.buffer)
        return
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise GatewayError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    with fh:
        try:
            yield from stream_messages(fh)
        except OSError as exc:
            raise GatewayError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _ahead(pool: AheadPool | None, batches: Iterable[list[tuple[bytes, Origin]]]
           ) -> Iterator[tuple[list[tuple[bytes, Origin]], list[Ahead] | None]]:
    """Each batch with its pure steps run ahead by ``pool`` (None without a pool), in order."""
    if pool is None:
        for items in batches:
            yield items, None
        return
    yield from pool.ordered(batches)


def stream_messages(fh: BinaryIO, chunk: int | None = None) -> Iterator[bytes]:
    """``split_messages`` of everything ``fh`` holds, read ``chunk`` (CHUNK) bytes at a time: what was read is
    cut only where ``split_messages`` would cut anyway (:func:`_cut`), so the messages are the same
    and memory holds a chunk and the longest message."""
    buf, size = b"", chunk or CHUNK
    while data := fh.read(size):
        buf += data
        cut = _cut(buf)
        if cut > 0:
            yield from split_messages(buf[:cut])
            buf = buf[cut:]
    if buf:
        yield from split_messages(buf)


def _cut(buf: bytes) -> int:
    """Where ``buf`` can be cut without changing the split (0: nowhere yet): before its last MLLP start
    block; after the end block of a frame it starts with (its CR too); else before the last line that
    starts a message or a batch segment (a character after its id read: ``MSHX`` is no boundary)."""
    start = buf.rfind(START_BLOCK)
    if start > 0:
        return start
    if start == 0:
        end = buf.find(END_BLOCK)
        if end < 0 or end + 1 >= len(buf):
            return 0
        return end + 2 if buf[end + 1:end + 2] == b"\r" else end + 1
    last = 0
    for match in _BOUNDARY.finditer(buf):
        if match.end() < len(buf):
            last = match.start()
    return last


def _receive(receiver: Receiver, items: list[tuple[bytes, Origin]], ahead: list[Ahead] | None = None
             ) -> list[Reply]:
    """One batch through the intake: ``receive_many`` when it has it (with the pure steps run ahead,
    when they were), else one ``receive`` each."""
    many = getattr(receiver, "receive_many", None)
    if callable(many):
        replies: list[Reply] = many(items) if ahead is None else many(items, ahead)
        return replies
    return [receiver.receive(raw, origin) for raw, origin in items]


def _count(summary: IngestSummary, origin: Origin, reply: Reply) -> None:
    summary.codes[reply.code] = summary.codes.get(reply.code, 0) + 1
    if reply.duplicate:
        summary.duplicates += 1
    elif reply.code == "AA":
        summary.accepted += 1
    else:
        summary.refused += 1
        log.info("refused %s code=%s control_id=%s", origin.peer, reply.code, reply.control_id)

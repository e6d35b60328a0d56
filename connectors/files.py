"""Files: ``pivot ingest FILE…`` feeds files of messages, FHS/BHS batches or MLLP captures to the intake.

Each file is split into messages without decoding (:func:`gateway.hl7v2.batch.split_messages`);
each message goes through the same intake as MLLP and HTTP (origin ``file``, peer
``<path>#<n>``), so a refused message is a dead letter with its reason like any other. The
summary counts accepted, refused (AE/AR) and duplicate messages; a progress bar (rich) shows
messages per file. Files are read whole: an ER day of ADT is a few MB.

Messages go to the intake in batches of :data:`BATCH` (in file order): a receiver with
``receive_many`` (:class:`BatchReceiver`) commits each batch's raw messages in one transaction —
one fsync per batch instead of one per message — and answers only once that commit is durable,
so a message is counted accepted only once it is stored; a receiver without it gets one
``receive`` per message. The summary is printed once the last batch is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from connectors.base import Origin, Receiver, Reply
from gateway.errors import GatewayError
from gateway.hl7v2.batch import split_messages

log = logging.getLogger("pivot.files")
TRANSPORT = "file"
BATCH = 256
"""Messages per intake batch: one durable commit (fsync) each when the receiver takes batches."""


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
                 print_summary: bool = True) -> IngestSummary:
    """Feed every message of ``paths`` to ``receiver`` in order; unreadable files raise GatewayError."""
    batches: list[tuple[Path, list[bytes]]] = []
    for path in paths:
        try:
            batches.append((path, split_messages(path.read_bytes())))
        except OSError as exc:
            raise GatewayError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    summary = IngestSummary(files=len(paths))
    total = sum(len(msgs) for _p, msgs in batches)
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("ingesting", total=total)
        for path, msgs in batches:
            for start in range(0, len(msgs), BATCH):
                items = [(raw, Origin(TRANSPORT, f"{path.name}#{n}"))
                         for n, raw in enumerate(msgs[start:start + BATCH], start=start + 1)]
                for (_raw, origin), reply in zip(items, _receive(receiver, items), strict=True):
                    _count(summary, origin, reply)
                bar.advance(task, len(items))
    if print_summary:
        print(summary.line())
    return summary


def _receive(receiver: Receiver, items: list[tuple[bytes, Origin]]) -> list[Reply]:
    """One batch through the intake: ``receive_many`` when it has it, else one ``receive`` each."""
    many = getattr(receiver, "receive_many", None)
    if callable(many):
        replies: list[Reply] = many(items)
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

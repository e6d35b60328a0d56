"""Interface of the event log (embedded or Kafka)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to append. ``key`` decides the partition (patient id for fhir.* topics)."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """A stored record as read by a consumer."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int

    @property
    def ref(self) -> str:
        """Stable reference of this record: ``topic:partition:offset``."""
        return f"{self.topic}:{self.partition}:{self.offset}"


class Consumer(Protocol):
    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class EventLog(Protocol):
    def append(self, record: OutRecord) -> None:
        """Store one record durably; raise PublishError when that is impossible."""
        ...

    def append_many(self, records: list[OutRecord], *, sync: bool = True) -> None:
        """Store several records durably (one fsync / one flush). ``sync=False``: stored (a crash of
        the process loses nothing) but the embedded log does not wait for the disk: a power cut may
        lose them, with everything appended after them (offset commits included). Only for records
        derived from others that are durable, which are produced again when lost (the mapping
        worker's ``fhir.*``: its consumer offsets then go back too). Kafka always waits for acks."""
        ...

    def consumer(self, group: str, topics: list[str], *, from_beginning: bool = True) -> Consumer: ...

    def read_all(self, topic: str) -> list[Record]:
        """Every record of a topic from the beginning (dead-letter listing, rebuilds)."""
        ...

    def close(self) -> None: ...


def read_in_order(log_: EventLog, topics: list[str]) -> list[Record]:
    """Every record of ``topics`` merged in the order they were appended (``identity rebuild`` replays
    ``hl7v2.in`` and ``hl7v2.bulk`` as one stream): exact in the embedded log, whose offsets are one
    sequence for all topics (``global_offsets``); by timestamp with Kafka, which has no order across
    topics or partitions (ties: the topics as listed, then partition and offset)."""
    records = [rec for topic in topics for rec in log_.read_all(topic)]
    if getattr(log_, "global_offsets", False):
        return sorted(records, key=lambda rec: rec.offset)
    rank = {topic: n for n, topic in enumerate(topics)}
    return sorted(records, key=lambda rec: (rec.timestamp_ms, rank[rec.topic], rec.partition, rec.offset))

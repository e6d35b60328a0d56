"""Raw HL7v2 from Kafka: for sites that already land ER7 messages on a topic (PIVOT_KAFKA_RAW_IN_TOPIC).

Each record's value is one ER7 message (MSH first, segments separated by CR). The connector hands
it to the intake (``receiver.receive(raw, Origin("kafka", "topic:partition:offset"))``) and
commits the record's offset only after the intake returned a final outcome:

- AA, AE and AR are final: accepted messages are in the log, refused ones in the dead letters
  (``pivot.deadletter``), so nothing is lost by moving on.
- An exception from the receiver, or a reply marked ``transient`` (the log was unavailable, HL7
  "system down"), is not final: nothing from that record on is committed, the partitions are
  rewound to it and it is retried after a back-off (0.2 s doubling to 5 s). A resend of an already
  accepted message is harmless (the intake deduplicates on sender + MSH-10).

Kafka has no way back to the sender, so the ACKs are dropped; outcomes are logged (offset
reference, control id, code; never content) and counted in ``outcomes``. Several gateway
processes with the same group share the topic's partitions. The poll loop runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

from connectors.base import Origin, Receiver, Reply
from gateway.eventlog.base import Record
from gateway.eventlog.kafka import KafkaLog

log = logging.getLogger(__name__)

TRANSPORT = "kafka"
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0
_SUMMARY_EVERY_S = 60.0


def is_final(reply: Reply) -> bool:
    """AA/AE/AR are final unless the intake marked the reply transient (log down: retry later)."""
    return reply.code in {"AA", "AE", "AR"} and not getattr(reply, "transient", False)


class KafkaRawConnector:
    """Consumes raw ER7 records from ``topic`` in consumer group ``group`` (one Connector)."""

    name = "kafka-raw"

    def __init__(self, *, bootstrap: str, topic: str, group: str, receiver: Receiver,
                 session_timeout_ms: int = 10000, heartbeat_interval_ms: int | None = None,
                 poll_timeout_s: float = 0.5, max_records: int = 100, client_id: str = "pivot-raw-in") -> None:
        self.topic = topic
        self.group = group
        self.receiver = receiver
        self.poll_timeout_s = poll_timeout_s
        self.max_records = max_records
        self._log = KafkaLog(bootstrap, client_id=client_id, session_timeout_ms=session_timeout_ms,
                             heartbeat_interval_ms=heartbeat_interval_ms)
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.outcomes: Counter[str] = Counter()
        self.retries = 0
        self.committed = 0

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, name="pivot-kafka-raw", daemon=True)
        self._thread.start()
        log.info("kafka raw input: topic %s group %s", self.topic, self.group)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop_event.set()
        await asyncio.to_thread(thread.join, 30.0)
        self._log_summary()

    # -- the poll loop (its own thread) --------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._log.consumer(self.group, [self.topic])
        delay = _BACKOFF_START_S
        last_summary = time.monotonic()
        try:
            while not self._stop_event.is_set():
                records = consumer.poll(timeout_s=self.poll_timeout_s, max_records=self.max_records)
                if not records:
                    continue
                done, pending = self._handle(records)
                if done and consumer.commit_records(done):
                    self.committed += len(done)
                if pending:
                    consumer.rewind(pending)
                    if not self._stop_event.is_set():
                        self.retries += 1
                        self._stop_event.wait(delay)
                        delay = min(delay * 2, _BACKOFF_MAX_S)
                else:
                    delay = _BACKOFF_START_S
                if time.monotonic() - last_summary >= _SUMMARY_EVERY_S:
                    self._log_summary()
                    last_summary = time.monotonic()
        except Exception:
            log.exception("kafka raw input stopped on an unexpected error topic=%s", self.topic)
            raise
        finally:
            consumer.close()
            self._log.close()

    def _handle(self, records: list[Record]) -> tuple[list[Record], list[Record]]:
        """Pass records to the receiver in order; stop at the first non-final outcome.

        Returns (records with a final outcome, records to deliver again).
        """
        for n, rec in enumerate(records):
            if self._stop_event.is_set():
                return records[:n], records[n:]
            try:
                reply = self.receiver.receive(rec.value, Origin(TRANSPORT, rec.ref))
            except Exception as exc:  # noqa: BLE001 - any failure means "not stored": retry the record
                log.warning("kafka raw input: receiver failed ref=%s error=%s, will retry",
                            rec.ref, type(exc).__name__)
                return records[:n], records[n:]
            if not is_final(reply):
                log.warning("kafka raw input: not stored ref=%s control_id=%s code=%s, will retry",
                            rec.ref, reply.control_id, reply.code)
                return records[:n], records[n:]
            self.outcomes[reply.code] += 1
            level = logging.DEBUG if reply.code == "AA" else logging.WARNING
            log.log(level, "kafka raw input: ref=%s control_id=%s code=%s duplicate=%s size=%d",
                    rec.ref, reply.control_id, reply.code, reply.duplicate, len(rec.value))
        return records, []

    def _log_summary(self) -> None:
        counts = " ".join(f"{code}={self.outcomes[code]}" for code in ("AA", "AE", "AR"))
        log.info("kafka raw input topic=%s %s committed=%d retries=%d", self.topic, counts,
                 self.committed, self.retries)

"""The event log on Kafka (kafka-python): durable appends, consumer groups, topic reads.

Durability: the producer uses ``acks="all"`` and idempotence (no duplicate or reordered batch on
a retry), so ``append``/``append_many`` return only once every record is acknowledged by all
in-sync replicas. Each call is bounded by ``publish_timeout_s``; on timeout or any broker error it
raises :class:`PublishError` (stable message, never a payload) and the producer is discarded, a
fresh one being built on the next call (this also clears a producer id the broker forgot after a
restart). A failed ``append_many`` may have stored some of its records: callers retry and the
records are idempotent (deterministic ids), the usual at-least-once contract.

Partitions: the record key decides the partition (Kafka's murmur2 partitioner), so everything of
one patient (``fhir.*`` topics are keyed by the patient id) stays in order. Topics are created on
first use with ``partitions`` partitions (an existing topic is left alone).

Consumers subscribe through a consumer group, so several gateway processes share the partitions;
offsets are committed only by ``commit()`` (``enable_auto_commit=False``): at-least-once.
Neither the log nor its consumers need the broker at construction time: clients are built lazily,
so a gateway starts while Kafka is down and answers AR until it is back.

``linger_ms`` defaults to 0: records queued while a request is in flight are still batched, and
on tansu (2 cores) one append took 1.0 ms instead of 4.1 ms with 2 ms, 16 concurrent appenders
reached 5,800 records/s instead of 3,200, and 500-record ``append_many`` calls ~11,000-13,000/s
either way. Known tansu 0.6 quirk: ListOffsets(latest) answers the last batch's base offset + 1, so
``read_all`` takes end offsets from fetch high watermarks, and a new group with
``from_beginning=False`` may start inside the last batch (a few old records delivered).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():  # kafka-python 3.0 loads its protocol schemas with a deprecated API
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

from gateway.errors import PublishError
from gateway.eventlog.base import OutRecord, Record

log = logging.getLogger(__name__)

# kafka-python's DEBUG records dump raw request bytes, i.e. message content (health data): never let
# them through, whatever PIVOT_LOG_LEVEL says. Its INFO records are connection chatter.
_kafka_logger = logging.getLogger("kafka")
if _kafka_logger.level < logging.WARNING:  # NOTSET included: inheriting DEBUG from the root is the leak
    _kafka_logger.setLevel(logging.WARNING)

_TOPIC_EXISTS = 36
_NOT_AUTHORIZED = {29, 31}  # topic / cluster authorization failed: topics are provisioned by ops
_RECONNECT_BACKOFF_MAX_MS = 1000


class KafkaLog:
    """EventLog on a Kafka cluster. Thread-safe (one shared producer); consumers are per thread."""

    def __init__(self, bootstrap: str, *, client_id: str, session_timeout_ms: int = 10000,
                 heartbeat_interval_ms: int | None = None, publish_timeout_s: float = 10.0,
                 partitions: int = 4, linger_ms: int = 0) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        # tansu completes a join about half a session timeout after it starts, and only on a heartbeat
        # tick: with a 1 s heartbeat, 6 s -> 3 s and 10 s -> 5 s (a 1.67 s heartbeat made it 10 s).
        self.heartbeat_interval_ms = heartbeat_interval_ms or max(100, min(1000, session_timeout_ms // 3))
        self.publish_timeout_s = publish_timeout_s
        self.partitions = partitions
        self.linger_ms = linger_ms
        self._producer: Any = None
        self._admin: Any = None
        self._lock = threading.Lock()
        self._admin_lock = threading.Lock()
        self._known: set[str] = set()
        self._closed = False

    # -- clients -----------------------------------------------------------------------------------
    def _timeout_ms(self) -> int:
        return max(1000, int(self.publish_timeout_s * 1000))

    def common_config(self) -> dict[str, Any]:
        """Connection settings shared by every client of this log."""
        return {"bootstrap_servers": self.bootstrap.split(","), "client_id": self.client_id,
                "bootstrap_timeout_ms": self._timeout_ms(),
                "reconnect_backoff_max_ms": _RECONNECT_BACKOFF_MAX_MS}

    def _get_producer(self) -> Any:
        with self._lock:
            if self._closed:
                raise PublishError("event log is closed")
            if self._producer is None:
                timeout = self._timeout_ms()
                request = max(500, timeout - self.linger_ms - 100)
                self._producer = KafkaProducer(
                    **self.common_config(), acks="all", enable_idempotence=True, linger_ms=self.linger_ms,
                    max_block_ms=timeout, request_timeout_ms=request,
                    delivery_timeout_ms=request + self.linger_ms + 50)
            return self._producer

    def _discard_producer(self, producer: Any) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None
            else:
                return
        try:
            producer.close(timeout=0)
        except Exception:
            log.debug("kafka producer close failed", exc_info=True)

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create missing topics (``partitions`` partitions, replication 1); existing ones are kept."""
        missing = [t for t in dict.fromkeys(topics) if t not in self._known]
        if not missing:
            return
        with self._admin_lock:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self.common_config(), request_timeout_ms=self._timeout_ms())
            response = self._admin.create_topics(
                [NewTopic(t, self.partitions, 1) for t in missing], timeout_ms=self._timeout_ms(),
                raise_errors=False)
        failed = []
        for result in _topic_results(response):
            name, code = result
            if code in (0, _TOPIC_EXISTS) or code in _NOT_AUTHORIZED:
                self._known.add(name)
            else:
                failed.append(code)
        if failed:
            raise PublishError(f"kafka could not create {len(failed)} topic(s), error codes {sorted(set(failed))}")

    # -- writing -----------------------------------------------------------------------------------
    def append(self, record: OutRecord) -> None:
        self.append_many([record])

    def append_many(self, records: list[OutRecord], *, sync: bool = True) -> None:
        """Send every record, then wait until each one is acknowledged by the cluster (``sync`` is
        the embedded log's: the cluster's acknowledgement is the same either way).

        The wait is bounded by ``publish_timeout_s``; while the cluster is unreachable a call may take
        up to about twice that (connecting the admin client, then the producer).
        """
        if not records:
            return
        if self._closed:
            raise PublishError("event log is closed")
        deadline = time.monotonic() + self.publish_timeout_s
        producer: Any = None
        try:
            self.ensure_topics(r.topic for r in records)
            producer = self._get_producer()
            futures = [producer.send(r.topic, value=r.value, key=r.key,
                                     headers=[(k, v.encode("utf-8")) for k, v in r.headers.items()])
                       for r in records]
            for future in futures:  # no flush(): it would also wait for other threads' records
                future.get(timeout=max(0.001, deadline - time.monotonic()))
        except PublishError:
            if producer is not None:
                self._discard_producer(producer)
            raise
        except Exception as exc:  # noqa: BLE001 - any client failure is "not stored": AR, never a crash
            if producer is not None:
                self._discard_producer(producer)
            log.warning("kafka append failed records=%d error=%s", len(records), type(exc).__name__)
            raise PublishError(f"kafka unavailable: {type(exc).__name__}") from None

    # -- reading -----------------------------------------------------------------------------------
    def consumer(self, group: str, topics: list[str], *, from_beginning: bool = True) -> KafkaEventConsumer:
        return KafkaEventConsumer(self, group, topics, from_beginning=from_beginning)

    def read_all(self, topic: str) -> list[Record]:
        """Every record of ``topic`` up to the end offsets taken at the start, without a group.

        Sorted by (timestamp, partition, offset). Raises PublishError when the cluster cannot be
        read within ``publish_timeout_s`` (the error class of an unavailable log).
        """
        deadline = time.monotonic() + self.publish_timeout_s
        try:
            consumer = KafkaConsumer(**self.common_config(), group_id=None, enable_auto_commit=False,
                                     auto_offset_reset="earliest", allow_auto_create_topics=False,
                                     request_timeout_ms=self._timeout_ms())
        except (KafkaError, OSError) as exc:
            raise PublishError(f"kafka unavailable: {type(exc).__name__}") from None
        try:
            return _read_to_end(consumer, topic, deadline)
        except KafkaError as exc:
            raise PublishError(f"kafka read failed: {type(exc).__name__}") from None
        finally:
            consumer.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=self.publish_timeout_s)
            except KafkaError:
                log.warning("kafka producer did not close cleanly")
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None


def group_members(bootstrap: str, group: str, timeout_ms: int = 5000) -> list[str] | None:
    """The member ids of the consumer group's members now (DescribeGroups; a member id is the
    client id + ``-`` + a unique suffix), None when the broker cannot tell (unreachable, or the
    request refused). tansu 0.6 answers it (with an empty client id, and an
    ``authorized_operations`` value kafka-python cannot decode: the decoding of ACL operations is
    skipped, not used here); it keeps listing a member killed without leaving the group."""
    admin: Any = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pivot-group-check",
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                 reconnect_backoff_max_ms=_RECONNECT_BACKOFF_MAX_MS)
        admin._process_acl_operations = lambda description: description
        described = admin.describe_groups([group])
    except (KafkaError, OSError, ValueError) as exc:
        log.warning("consumer group %s not described (%s)", group, type(exc).__name__)
        return None
    finally:
        if admin is not None:
            admin.close()
    found = described.get(group) or {}
    if found.get("error"):
        return None
    return [str(m.get("member_id") or "") for m in found.get("members") or [] if isinstance(m, dict)]


def _topic_results(response: Any) -> list[tuple[str, int]]:
    """(name, error code) per topic from a CreateTopics response (object or dict form)."""
    topics = response.get("topics", []) if isinstance(response, dict) else getattr(response, "topics", [])
    out = []
    for item in topics:
        if isinstance(item, dict):
            out.append((str(item["name"]), int(item["error_code"])))
        elif isinstance(item, tuple):
            out.append((str(item[0]), int(item[1])))
        else:
            out.append((str(item.name), int(item.error_code)))
    return out


def _read_to_end(consumer: Any, topic: str, deadline: float) -> list[Record]:
    """Read each partition up to its end offset, taken from the first fetch's high watermark.

    ListOffsets(latest) alone is not trusted: tansu 0.6 answers the last batch's base offset + 1
    (e.g. 1 for a partition holding one batch of 42 records). It is still right about an empty
    partition (0) and never above the truth, so it says which partitions need reading.
    """
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        return []
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    hints = {tp: int(off) for tp, off in consumer.end_offsets(tps).items()}
    pending = {tp for tp, end in hints.items() if end > 0}
    ends: dict[Any, int] = {}
    out: list[Any] = []
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PublishError(f"kafka read of a topic timed out with {len(pending)} partition(s) unread")
        batch = consumer.poll(timeout_ms=int(min(remaining, 0.5) * 1000), max_records=1000)
        for recs in batch.values():
            out.extend(recs)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is None:
                continue
            end = ends.setdefault(tp, max(int(high), hints[tp]))
            if consumer.position(tp) >= end:
                pending.discard(tp)
                consumer.pause(tp)
    records = [_record(r) for r in out if r.offset < ends.get(TopicPartition(r.topic, r.partition), 0)]
    records.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
    return records


def _record(rec: Any) -> Record:
    headers = {str(k): (v or b"").decode("utf-8", "replace") for k, v in (rec.headers or [])}
    return Record(topic=rec.topic, partition=rec.partition, offset=rec.offset, key=rec.key,
                  value=rec.value if rec.value is not None else b"", headers=headers,
                  timestamp_ms=int(rec.timestamp))


class KafkaEventConsumer:
    """A group member: ``poll`` returns records, ``commit`` stores the offsets of all returned so far.

    The underlying KafkaConsumer is built on the first ``poll``; while the cluster is unreachable
    ``poll`` waits its timeout and returns nothing, and ``commit`` logs and returns (the records are
    delivered again: at-least-once).
    """

    def __init__(self, log_: KafkaLog, group: str, topics: list[str], *, from_beginning: bool) -> None:
        self._log = log_
        self.group = group
        self.topics = list(topics)
        self._from_beginning = from_beginning
        self._consumer: Any = None

    def _ensure(self) -> Any:
        if self._consumer is None:
            self._log.ensure_topics(self.topics)
            consumer = KafkaConsumer(
                **self._log.common_config(), group_id=self.group, enable_auto_commit=False,
                auto_offset_reset="earliest" if self._from_beginning else "latest",
                session_timeout_ms=self._log.session_timeout_ms,
                heartbeat_interval_ms=self._log.heartbeat_interval_ms,
                request_timeout_ms=max(self._log._timeout_ms(), self._log.session_timeout_ms + 5000))
            consumer.subscribe(self.topics)
            self._consumer = consumer
        return self._consumer

    @property
    def raw(self) -> Any:
        """The kafka-python consumer (None before the first poll), for per-offset commits."""
        return self._consumer

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Record]:
        started = time.monotonic()
        try:
            consumer = self._ensure()
            batch = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except (KafkaError, OSError, PublishError) as exc:
            log.warning("kafka poll failed group=%s error=%s", self.group, type(exc).__name__)
            time.sleep(max(0.0, timeout_s - (time.monotonic() - started)))
            return []
        out: list[Record] = []
        for recs in batch.values():
            out.extend(_record(r) for r in recs)
        return out

    def commit(self) -> None:
        if self._consumer is None:
            return
        try:
            self._consumer.commit(timeout_ms=self._log._timeout_ms())
        except KafkaError as exc:  # rebalanced or unreachable: the records will be delivered again
            log.warning("kafka commit failed group=%s error=%s", self.group, type(exc).__name__)

    def commit_records(self, records: list[Record]) -> bool:
        """Commit just past the highest offset of ``records`` in each partition; False if refused."""
        if self._consumer is None or not records:
            return True
        offsets: dict[Any, Any] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            if tp not in offsets or offsets[tp].offset <= rec.offset:
                offsets[tp] = OffsetAndMetadata(rec.offset + 1, "", -1)
        try:
            self._consumer.commit(offsets, timeout_ms=self._log._timeout_ms())
        except KafkaError as exc:
            log.warning("kafka commit failed group=%s error=%s", self.group, type(exc).__name__)
            return False
        return True

    def rewind(self, records: list[Record]) -> None:
        """Seek each partition still assigned to us back to the lowest offset among ``records``."""
        if self._consumer is None:
            return
        lowest: dict[Any, int] = {}
        for rec in records:
            tp = TopicPartition(rec.topic, rec.partition)
            lowest[tp] = min(rec.offset, lowest.get(tp, rec.offset))
        assigned = self._consumer.assignment()
        for tp, offset in lowest.items():
            if tp in assigned:  # a partition lost in a rebalance restarts from its committed offset
                self._consumer.seek(tp, offset)

    def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close(autocommit=False)
            except KafkaError:
                log.warning("kafka consumer did not close cleanly group=%s", self.group)

"""Feed health for hospital IT: per sender, what came in over the last hour and day, how it was
acknowledged, how fast, when the sender last spoke, and the messages quarantined as unsupported.

Everything is computed from the event log's headers (``logtail``), not from counters, so the
figures survive a restart and are the same on every instance:

- an ``hl7v2.in`` or ``hl7v2.bulk`` (files) record is a message accepted (AA) — AE when the mapping worker later
  dead-lettered it (an enhanced-mode message, its dead letter's ``source_ref`` names the record);
- a ``deadletter`` record written by the intake (any stage but ``map`` from the worker,
  ``deliver`` and ``store``) is a refusal, AE or AR as its error code says (gateway.errors);
- the time is the header's ``received_at`` / ``at``; the ACK latency is the time from
  ``received_at`` to the durable append (the ACK of an accepted message leaves right after);
- duplicates (acknowledged again, never logged) are not counted: see ``pivot_messages_total``.

A sender is **silent** when its last message (accepted or not) is older than its threshold
(console.json; default 30 minutes), or when it is expected and never spoke. Unknown triggers are
the ``unsupported`` dead letters: their MSH-9 and MSH-12 are read from the first bytes of the
raw message (ids, never field values), and grouped per sender and message type.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.console.common import iso
from gateway.console.config import ConsoleConfig
from gateway.console.logtail import LastSeen, Tail, recent
from gateway.defisante.codes import JSON
from gateway.errors import GatewayError
from gateway.eventlog.base import EventLog
from gateway.settings import Settings
from gateway.topics import DEADLETTER, HL7V2_BULK, HL7V2_IN

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
NOT_INTAKE = frozenset({"deliver", "store", "warning"})  # warning: an accepted message's review entry
QUARANTINE_LIMIT = 200
_SAFE = re.compile(r"[^A-Za-z0-9^_.]")


def _ack_codes() -> dict[str, str]:
    """Error code → ACK code, from the error tree (every subclass of GatewayError)."""
    out: dict[str, str] = {}
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        out.setdefault(str(cls.code), cls.ack_code)
        todo.extend(cls.__subclasses__())
    return out


def _ms(text: str, fallback: int) -> int:
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000) if text else fallback
    except ValueError:
        return fallback


@dataclass(slots=True)
class _Counts:
    messages: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    deadletters: int = 0

    def json(self) -> JSON:
        return {"messages": self.messages, "AA": self.codes["AA"], "AE": self.codes["AE"], "AR": self.codes["AR"],
                "deadletters": self.deadletters}


@dataclass(slots=True)
class _Sender:
    hour: _Counts = field(default_factory=_Counts)
    day: _Counts = field(default_factory=_Counts)
    hourly: list[int] = field(default_factory=lambda: [0] * 24)
    latency_ms: list[int] = field(default_factory=list)
    last_ms: int = 0

    def count(self, at: int, now: int, code: str) -> None:
        for counts, span in ((self.day, DAY_MS), (self.hour, HOUR_MS)):
            if now - at <= span:
                counts.messages += 1
                counts.codes[code] += 1
        slot = 23 - min(23, max(0, (now - at) // HOUR_MS))
        self.hourly[int(slot)] += 1

    def dead(self, at: int, now: int) -> None:
        for counts, span in ((self.day, DAY_MS), (self.hour, HOUR_MS)):
            if now - at <= span:
                counts.deadletters += 1


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _msh(head: bytes) -> tuple[str, str]:
    """MSH-9 and MSH-12 of a raw message's first bytes (only letters, digits, ^ _ .)."""
    text = head.lstrip(b"\xef\xbb\xbf\r\n\t \x0b").decode("latin-1")
    if not text.startswith("MSH") or len(text) < 4:
        return "", ""
    fields = [*text.split("\r", 1)[0].split("\n", 1)[0].split(text[3]), *[""] * 12]
    return _SAFE.sub("", fields[8])[:24], _SAFE.sub("", fields[11])[:24]


def _split(sender: str) -> tuple[str, str]:
    app, _, facility = sender.partition("|")
    return app, facility


def feed_health(log: EventLog, settings: Settings, config: ConsoleConfig, now: int,
                seen_by: LastSeen | None = None) -> JSON:
    """The feed-health page's data (see the module docstring); ``seen_by`` keeps the senders' last
    message between calls (a fresh one reads the topics once)."""
    seen_by = seen_by or LastSeen()
    lanes = (settings.topic(HL7V2_IN), settings.topic(HL7V2_BULK))  # live, and files (a backfill)
    topic_dead = settings.topic(DEADLETTER)
    since = now - DAY_MS
    inbound = [recent(log, topic, since) for topic in lanes]
    dead = recent(log, topic_dead, since)
    acks = _ack_codes()
    senders: dict[str, _Sender] = defaultdict(_Sender)
    refs = tuple(f"{topic}:" for topic in lanes)  # a dead letter of the mapping worker names its record
    worker_ae = {t.headers.get("source_ref", "") for t in dead.records if t.headers.get("stage") == "map"
                 and t.headers.get("source_ref", "").startswith(refs)}
    for topic, window in zip(lanes, inbound, strict=True):
        for rec in window.records:
            sender = rec.headers.get("sender", "")
            at = _ms(rec.headers.get("received_at", ""), rec.ts_ms)
            state = senders[sender]
            state.count(at, now, "AE" if f"{topic}:{rec.id}" in worker_ae else "AA")
            state.last_ms = max(state.last_ms, at)
            if now - at <= DAY_MS:
                state.latency_ms.append(max(0, rec.ts_ms - at))
    stages: Counter[str] = Counter()
    for rec in dead.records:
        h = rec.headers
        at = _ms(h.get("at", ""), rec.ts_ms)
        if now - at > DAY_MS:
            continue
        stages[h.get("stage", "")] += 1
        sender = h.get("sender", "")
        if not sender:
            continue
        state = senders[sender]
        state.dead(at, now)
        if h.get("stage") in NOT_INTAKE or h.get("source_ref", "").startswith(refs):
            continue
        code = "AR" if h.get("stage") == "receive" else acks.get(h.get("code", ""), "AE")
        state.count(at, now, code)
        state.last_ms = max(state.last_ms, at)
    quarantine = _quarantine(recent(log, topic_dead, 0, limit=QUARANTINE_LIMIT, head_bytes=512,
                                    where_stage="unsupported").records, config)
    unknown = Counter(q["sender"] for q in quarantine["items"])
    seen = seen_by.get(log, topic_dead)
    for topic in lanes:
        for sender, ts in seen_by.get(log, topic).items():
            seen[sender] = max(ts, seen.get(sender, 0))
    names = set(senders) | {s.sender for s in config.senders}
    rows = [_row(name, senders.get(name, _Sender()), seen, config, now, unknown[name])
            for name in names if name]
    rows.sort(key=lambda r: (not r["silent"], r["label"] or r["sender"]))
    return {"now": iso(now), "windowHours": 24, "senders": rows, "quarantine": quarantine,
            "deadletters": {"day": sum(stages.values()), "byStage": dict(sorted(stages.items()))},
            "truncated": any(window.truncated for window in inbound) or dead.truncated}


def _row(name: str, state: _Sender, seen: dict[str, int], config: ConsoleConfig, now: int, unknown: int) -> JSON:
    app, facility = _split(name)
    last = max(state.last_ms, seen.get(name, 0)) or None
    threshold = config.threshold(name)
    age = (now - last) / 1000 if last else None
    return {"sender": name, "application": app, "facility": facility, "label": config.label(name),
            "siteLabel": config.sites.get(facility, ""), "silentAfterMinutes": threshold,
            "lastMessage": iso(last) if last else None, "lastMessageAgeSeconds": round(age, 1) if age is not None
            else None, "silent": age is None or age > threshold * 60,
            "hour": state.hour.json(), "day": state.day.json(), "hourly": state.hourly,
            "latencyMs": {"p50": _percentile(state.latency_ms, 0.5), "p95": _percentile(state.latency_ms, 0.95),
                          "max": max(state.latency_ms) if state.latency_ms else None,
                          "count": len(state.latency_ms)},
            "unknownTriggers": unknown}


def _quarantine(records: list[Tail], config: ConsoleConfig) -> JSON:
    items: list[JSON] = []
    groups: dict[tuple[str, str, str], JSON] = {}
    for rec in records:
        h = rec.headers
        kind, version = _msh(rec.head)
        item = {"id": rec.id, "at": h.get("at", ""), "sender": h.get("sender", ""), "controlId": h.get("msh10", ""),
                "messageType": kind, "version": version, "reason": h.get("reason", ""),
                "hl7Code": h.get("hl7_code", ""), "transport": h.get("transport", "")}
        items.append(item)
        key = (item["sender"], kind, version)
        group = groups.setdefault(key, {"sender": item["sender"], "label": config.label(item["sender"]),
                                        "messageType": kind, "version": version, "count": 0, "lastAt": item["at"]})
        group["count"] += 1
    return {"groups": sorted(groups.values(), key=lambda g: (-g["count"], g["sender"], g["messageType"])),
            "items": items, "limit": QUARANTINE_LIMIT}


class FeedCache:
    """The last answer, kept ``ttl_s`` seconds (the page polls; several tabs share one computation)."""

    def __init__(self, compute: Callable[[], JSON], ttl_s: float = 5.0) -> None:
        self.compute = compute
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._value: JSON | None = None

    def get(self) -> JSON:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self.ttl_s:
                self._value = self.compute()
                self._at = time.monotonic()
            return self._value

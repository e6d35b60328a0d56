"""Helpers of the scale-out scenario (tests/test_scale_out.py).

- :func:`scenario_feed`: a multi-site feed (``gateway.simulate``: site-only records, NAMs arriving
  later by A08, A40 merges, cancellations) of a few days ago, plus recent ER arrivals of the
  clients to enroll (one registered without the NAM, the A08 bringing it later) and resends (same
  sender + MSH-10; a new MSH-10) meant for another instance. Deterministic from its ``anchor``.
- :class:`Sender`: one MLLP connection per instance; each message waits for its ACK.
- :func:`fhir_state` / :func:`canonical`: every Patient, Encounter, Flag, Communication of an
  instance's /fhir, compared without what differs between equal runs (meta.versionId,
  meta.lastUpdated, Communication.sent = the moment the message was received) and with the lists
  whose order means nothing sorted.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from gateway.defisante.arrival import visit_message
from gateway.defisante.codes import NAM_SYSTEM
from gateway.simulate import simulate
from tests.e2e_helpers import END, START, FrameReader, ack_field

JSON = dict[str, Any]
TYPES = ("Patient", "Encounter", "Flag", "Communication")
# lists whose order carries no meaning (the rest — names, given names, payloads — keep theirs)
UNORDERED = frozenset({"identifier", "link", "telecom", "address", "recipient", "participant", "diagnosis",
                       "location", "reasonCode", "category", "generalPractitioner", "basedOn", "about",
                       "inResponseTo", "extension", "coding", "profile", "tag", "security"})
_VOLATILE = {"Communication": ("sent",)}
_SEX = {"M": "male", "F": "female"}


@dataclass
class Step:
    """One thing the feed does: send ``raw`` (to instance ``to``; None = round-robin), or, when
    ``enroll`` is set, enroll those NAMs (once every earlier message is processed)."""

    raw: bytes = b""
    to: int | None = None
    enroll: tuple[str, ...] = ()
    kill: int | None = None  # SIGKILL this instance here
    restart: int | None = None  # start it again here (same data dir, same ports)


@dataclass
class Feed:
    steps: list[Step]
    enrolled: tuple[str, ...]  # NAMs
    arrivals: dict[str, list[str]] = field(default_factory=dict)  # NAM → visit numbers that must alert
    sim_messages: int = 0


def _fields(raw: bytes) -> dict[str, list[str]]:
    text = raw.decode("utf-8") if b"UNICODE UTF-8" in raw.split(b"\r", 1)[0] else raw.decode("latin-1")
    return {line.split("|", 1)[0]: line.split("|") for line in text.split("\r") if line}


def _who(raw: bytes) -> tuple[str, str, str, str] | None:
    """(NAM, ``family^given``, birth date YYYYMMDD, sex) of a message carrying a NAM, else None."""
    pid = _fields(raw)["PID"]
    nam = next((i.split("^")[0] for i in pid[3].split("~") if i.endswith("^JHN")), "")
    if not nam:
        return None
    family, given = [*pid[5].split("^"), ""][:2]
    return nam, f"{family}^{given}", pid[7], pid[8]


def _patient(nam: str, who: tuple[str, str, str, str]) -> JSON:
    """A Patient-shaped dict for visit_message: its "id" only seeds the arrival's site MRN."""
    family, given = who[1].split("^")
    born = who[2]
    return {"id": f"scale-{hashlib.sha256(nam.encode()).hexdigest()[:10]}",
            "identifier": [{"system": NAM_SYSTEM, "value": nam}], "name": [{"family": family, "given": [given]}],
            "birthDate": f"{born[:4]}-{born[4:6]}-{born[6:8]}", "gender": _SEX.get(who[3], "unknown")}


def scenario_feed(anchor: datetime, *, people: int = 40, seed: int = 5, instances: int = 3, enroll: int = 3,
                  kill: int | None = 1) -> Feed:
    """The scenario's steps (see the module docstring); ``anchor``: an aware "now" fixed per test."""
    sim = simulate(sites=3, people=people, days=3, seed=seed, frequent=0.25,
                   start=anchor.replace(tzinfo=None) - timedelta(days=5))
    raws = [raw for _at, raw in sim.messages]
    frequent = set(sim.truth["frequent_nams"])
    cut = int(len(raws) * 0.45)
    seen: dict[str, tuple[str, str, str, str]] = {}
    for raw in raws[: cut // 2]:  # enrolled: frequent users the first half of the feed already knows
        who = _who(raw)
        if who and who[0] in frequent:
            seen.setdefault(who[0], who)
    nams = tuple(sorted(seen)[:enroll])
    feed = Feed([], nams, sim_messages=len(raws))
    late = _arrivals(anchor, nams, seen, feed)
    steps = [Step(raw) for raw in raws]
    if kill is not None:
        steps.insert(int(len(raws) * 0.70), Step(kill=kill))  # among the arrivals of enrolled clients
        steps.insert(int(len(raws) * 0.85), Step(restart=kill))
    at = next(n for n, s in enumerate(steps) if s.raw and s.raw == raws[cut])
    steps.insert(at, Step(enroll=nams))
    gap = max(1, (len(steps) - at) // (len(late) + 1))
    for k, step in enumerate(late):  # spread over the rest of the feed, in their own order
        steps.insert(at + 1 + gap * (k + 1) + k, step)
    feed.steps = steps
    return feed


def _arrivals(anchor: datetime, nams: tuple[str, ...], seen: dict[str, tuple[str, str, str, str]],
              feed: Feed) -> list[Step]:
    """Per enrolled client: an arrival at HSA (resent as is to another instance, then with a new
    MSH-10), one at HSJ registered without the NAM and completed by an A08 on another instance, then
    the discharge of the first. Every time is fixed from ``anchor`` (both runs send the same bytes)."""
    out: list[Step] = []
    for n, nam in enumerate(nams):
        patient = _patient(nam, seen[nam])
        first_at = anchor - timedelta(minutes=90 - n)
        first, second = f"VSC{n}A", f"VSC{n}B"
        a04 = visit_message(patient, site="HSA", visit=first, when=first_at, control_id=f"SC{n}A04")
        out += [Step(a04, to=n % 3), Step(a04, to=(n + 1) % 3),
                Step(visit_message(patient, site="HSA", visit=first, when=first_at, control_id=f"SC{n}A04R"),
                     to=(n + 2) % 3)]
        second_at = anchor - timedelta(minutes=60 - n)
        out += [Step(visit_message(patient, site="HSJ", visit=second, when=second_at, control_id=f"SC{n}B04",
                                   with_nam=False), to=(n + 1) % 3),
                Step(visit_message(patient, site="HSJ", visit=second, when=second_at, control_id=f"SC{n}B08",
                                   trigger="A08"), to=(n + 2) % 3),
                Step(visit_message(patient, site="HSA", visit=first, when=first_at, trigger="A03",
                                   control_id=f"SC{n}A03", departure=first_at + timedelta(minutes=40)))]
        feed.arrivals[nam] = [first, second]
    return out


class Sender:
    """MLLP to several instances: one connection each, reopened after a failure."""

    def __init__(self, ports: Callable[[int], int]) -> None:
        self.ports = ports
        self.conns: dict[int, tuple[socket.socket, FrameReader]] = {}

    def send(self, index: int, raw: bytes, timeout_s: float = 30.0) -> str:
        """MSA-1 of the ACK (the message is sent once; a broken connection is an error)."""
        sock, reader = self._conn(index)
        try:
            sock.sendall(START + raw + END)
            ack = reader.frame(timeout_s)
        except OSError:
            self.drop(index)
            raise
        return ack_field(ack, "MSA", 1)

    def _conn(self, index: int) -> tuple[socket.socket, FrameReader]:
        if index not in self.conns:
            sock = socket.create_connection(("127.0.0.1", self.ports(index)), timeout=10)
            self.conns[index] = (sock, FrameReader(sock))
        return self.conns[index]

    def drop(self, index: int) -> None:
        conn = self.conns.pop(index, None)
        if conn is not None:
            conn[0].close()

    def close(self) -> None:
        for index in list(self.conns):
            self.drop(index)


def fetch_all(base: str, rtype: str) -> list[JSON]:
    """Every resource of a type in an instance's /fhir (following the next links)."""
    out: list[JSON] = []
    url: str | None = f"{base}/fhir/{rtype}?_count=500"
    while url:
        resp = httpx.get(url, timeout=30)
        resp.raise_for_status()
        bundle = resp.json()
        out += [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return out


def _sorted_lists(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _sorted_lists(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [_sorted_lists(v) for v in value]
        if key in UNORDERED:
            items.sort(key=lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False))
        return items
    return value


def canonical(resource: JSON) -> JSON:
    """The resource without what differs between equal runs, its unordered lists sorted."""
    out = dict(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    for name in _VOLATILE.get(str(out.get("resourceType")), ()):
        out.pop(name, None)
    return _sorted_lists(out)  # type: ignore[no-any-return]


def fhir_state(base: str) -> dict[str, dict[str, JSON]]:
    """type → id → canonical resource."""
    return {rtype: {str(r["id"]): canonical(r) for r in fetch_all(base, rtype)} for rtype in TYPES}


def state_diff(a: dict[str, dict[str, JSON]], b: dict[str, dict[str, JSON]], limit: int = 6) -> list[str]:
    """Human lines naming what differs (ids and field names only)."""
    out: list[str] = []
    for rtype in TYPES:
        left, right = a.get(rtype, {}), b.get(rtype, {})
        for rid in sorted(set(left) ^ set(right)):
            out.append(f"{rtype}/{rid} only in {'first' if rid in left else 'second'}")
        for rid in sorted(set(left) & set(right)):
            if left[rid] != right[rid]:
                keys = sorted(k for k in set(left[rid]) | set(right[rid]) if left[rid].get(k) != right[rid].get(k))
                out.append(f"{rtype}/{rid} differs in {', '.join(keys)}")
    return out[:limit] + ([f"… {len(out) - limit} more"] if len(out) > limit else [])


def settled(read: Callable[[], Any], *, timeout_s: float, quiet_s: float = 1.5,
            ready: Callable[[Any], bool] = bool) -> Any:
    """``read()`` once it is ``ready`` and gave the same answer for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        value = read()
        if value != last or not ready(value):
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return value
        time.sleep(0.3)
    raise AssertionError("the state did not settle in time")


def visit_numbers(raws: list[bytes]) -> set[str]:
    """PV1-19 of every message that has a PV1 (A40s have none)."""
    return {seg["PV1"][19].split("^")[0] for raw in raws if "PV1" in (seg := _fields(raw))}


def control_ids(raws: list[bytes]) -> set[str]:
    return {_fields(raw)["MSH"][9] for raw in raws}

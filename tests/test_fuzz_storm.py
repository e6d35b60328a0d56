"""20,000 random, mutated and badly framed inputs through the real MLLP listener and POST /hl7v2
(``PIVOT_FUZZ_STORM=100000``: the full storm, 100,000 inputs; the same kinds of input either way).

Security requirement: no crash, no hang, memory bounded, and a slow or silent client cannot block
the others. The gateway runs in this process, on a tmp data dir: the MLLP listener (MllpServer on
the Intake, the code ``gateway.listener`` runs in its own process by default) and uvicorn (the real
HTTP server, not TestClient: its parser, keep-alive and connection handling are part of what an
attacker reaches, and only a real socket can be left half-written) on one event loop in a thread.
The attackers run in a child process (spawn), so that they use the other core instead of competing
for this process's GIL, and so that the RSS measured here is the gateway's alone.

Inputs are generated from seeded ``random.Random`` streams (one per connection, so the run does not
depend on scheduling): byte flips, insertions, deletions, truncations, duplications and charset
changes of valid ER messages (and of the conformance corpus when ``../shared/corpus`` is there),
random bytes, a header followed by garbage, valid messages; framing abuse on MLLP (noise and stray
end blocks between frames, floods of start bytes, frames split across writes, several frames per
write, a half frame cut short by a new one, lone control bytes inside a frame, empty and oversize
frames) and on HTTP (chunked bodies, requests split across writes, empty, oversize, wrong type).

Each connection sends one unit (one write or a few) and then reads exactly the ACKs the unit must
produce; it ends with a valid message of its own whose AA must carry its MSH-10, so that a missing
or an extra ACK anywhere on the connection fails. Mutations that would turn on enhanced mode
(MSH-15/16: zero or two ACKs per message, by design; see test_ack.py) are not sent.

What the storm found in the gateway (seven defects, fixed) is pinned by the regression tests at the
end of this file, and the storm itself now sends what found them.
This file replaces test_fuzz_listener.py (1,500 MLLP + 300 HTTP inputs, the same checks, fewer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import random
import re
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from connectors.mllp import frame
from gateway.errors import CharsetError, ParseError
from gateway.hl7v2 import parse, parse_text
from gateway.samples import er_message

# ACKed inputs in all (MLLP frames + HTTP requests): 20,000 in the default run (and at least), enough for every kind
# of unit (UNIT_KINDS, asserted) and payload; the full storm, 100,000, with PIVOT_FUZZ_STORM=100000
INPUTS = max(20_000, int(os.environ.get("PIVOT_FUZZ_STORM") or 20_000))
HTTP_INPUTS = INPUTS * 3 // 20  # 15%: 15,000 of the full storm
MLLP_CONNECTIONS = 24
HTTP_CONNECTIONS = 6
MAX_BYTES = 64 * 1024  # PIVOT_MLLP_MAX_MESSAGE_BYTES for both transports; the kept head is 64 KB too
HEAD_KEPT = 64 * 1024
IDLE_TIMEOUT_S = 3.0
# each MLLP connection starts with valid messages: 2,160 AA fill the intake's MapCache (2,048 mapping results,
# kept until the mapping worker takes them; workers are off here) before the RSS baseline is taken
WARM_UP = 90
ACK_DEADLINE_S = 30.0  # "no hang": every ACK (HTTP response) within this
STORM_DEADLINE_S = 330.0  # against a hang, not a speed goal: 100k inputs took 212-270 s on 2 cores (0.4.0)
# RSS from the baseline (after the warm-up) to the end of the storm, about 93,000 inputs. Measured: +30 MB, of
# which ~15 MB are metrics series labelled with made-up senders (test_metrics_do_not_grow_with_made_up_senders)
# and the rest SQLite page caches (2 MB each by default, half a dozen connections) and allocator slack. Keeping
# anything per input, as small as a third of the average refused payload (~0.9 KB), would cross it.
# The default storm (~16,000 inputs after the baseline; measured +4 MB) has a bound in proportion, 24 MB at least
# (a leak of ~1.5 KB per input would cross it); the finer sensitivity above is the full storm's.
RSS_GROWTH_LIMIT_MB = max(24.0, 64.0 * INPUTS / 100_000)
SEED = 20260123
# every kind of unit mllp_unit and http_unit make: each is sent in every run, the default one included
UNIT_KINDS = frozenset({*(f"mllp:{k}" for k in ("frame", "noise-before", "start-flood", "split", "batch", "batch-split",
                                                "abandoned", "control-bytes", "empty", "stray-end", "oversize")),
                        *(f"http:{k}" for k in ("post", "chunked", "split", "empty", "wrong-type", "oversize"))})
CORPUS = Path(__file__).parents[1].parent / "shared" / "corpus"
ACK_CODES = frozenset({"AA", "AE", "AR"})
HTTP_TYPES = (b"x-application/hl7-v2+er7", b"application/hl7-v2", b"text/plain", b"text/plain; charset=utf-8",
              b"Text/Plain")
TOKENS = (b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\r\n", b"MSH|", b"MSH|^~\\&|", b'""', b"\\X0\\", b"\\E",
          b"\\F\\", b"\xef\xbb\xbf", b"\x00", b"\xc3", b"\xe9", b"\x92", b"PID|", b"Z", b"|||||||||", b"^^^^")
CHARSETS = (b"", b"ASCII", b"8859/1", b"UNICODE UTF-8", b"UTF-8", b"8859/15", b"ISO IR87", b"\xe9", b"~", b"^")
# what an MSH line needs to value MSH-15/16 (AL, NE, ER or SU, perhaps escaped): only such lines are parsed
_MAYBE_ENHANCED = re.compile(rb"(?i)AL|NE|ER|SU|\\X")


# -- inputs ----------------------------------------------------------------------------------------------
@cache
def _seeds() -> tuple[bytes, ...]:
    seeds = [er_message(i, trigger=trigger, charset=charset) for i, (trigger, charset) in enumerate(
        [(t, c) for t in ("A04", "A01", "A03", "A08") for c in ("UNICODE UTF-8", "8859/1", "")] * 4)]
    if CORPUS.is_dir():
        from gateway.hl7v2.batch import split_messages

        for path in sorted(CORPUS.rglob("*.hl7"))[::4]:
            seeds.extend(_original_mode(m) for m in split_messages(path.read_bytes()) if len(m) < 6000)
    return tuple(seeds)


def _original_mode(raw: bytes) -> bytes:
    """``raw`` with MSH-15 and MSH-16 emptied."""
    end = min((i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0), default=len(raw))
    fields = raw[:end].split(raw[3:4])
    fields[14:16] = [b""] * len(fields[14:16])
    return raw[3:4].join(fields) + raw[end:]


def _enhanced(payload: bytes) -> bool:
    """Whether the intake would answer ``payload`` in enhanced mode (when in doubt, yes)."""
    from gateway.hl7v2.ack import ack_modes

    head = payload.lstrip(b"\xef\xbb\xbf\r\n\t ")
    if not _MAYBE_ENHANCED.search(re.split(rb"[\r\n]", head[:4096], maxsplit=1)[0]):
        return False
    try:
        return any(ack_modes(parse(payload)))
    except ParseError:
        return True


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 10)):
        op = rng.random()
        pos = rng.randrange(len(data) + 1)
        if op < 0.25:
            if data:
                data[min(pos, len(data) - 1)] = rng.getrandbits(8)
        elif op < 0.45:
            data[pos:pos] = rng.randbytes(rng.randint(1, 24))
        elif op < 0.65:
            data[pos:pos] = rng.choice(TOKENS)
        elif op < 0.85:
            del data[pos : pos + rng.randint(1, 60)]
        elif op < 0.91:
            del data[pos:]
        elif op < 0.97:
            at = rng.randrange(len(data) + 1)
            data[pos:pos] = data[at : at + rng.randint(1, 200)]
        else:  # MSH-18
            end = min((i for i in (data.find(b"\r"), data.find(b"\n")) if i >= 0), default=len(data))
            fields = bytes(data[:end]).split(b"|")
            fields += [b""] * max(0, 18 - len(fields))
            fields[17] = rng.choice(CHARSETS)
            data[:end] = b"|".join(fields)
    return bytes(data)


def _payload(rng: random.Random, *, mllp: bool) -> bytes:
    """One message body; for MLLP without framing bytes (framing abuse is added on purpose, elsewhere)."""
    seeds = _seeds()
    while True:
        r = rng.random()
        if r < 0.74:
            payload = _mutate(rng, rng.choice(seeds))
        elif r < 0.80:
            payload = b"MSH|^~\\&|" + rng.randbytes(rng.randint(0, 300))
        elif r < 0.96:
            payload = rng.randbytes(rng.randint(0, 400))
        else:
            payload = er_message(rng.randrange(1_000_000), charset=rng.choice(["UNICODE UTF-8", "8859/1", ""]))
        if mllp:
            payload = payload.translate(None, b"\x0b\x1c")
        if not _enhanced(payload):
            return payload


def _noise(rng: random.Random) -> bytes:
    """Bytes between frames: dropped by the listener, never answered."""
    return (rng.randbytes(rng.randint(1, 200)) + rng.choice([b"", b"\x1c\r", b"\r\n"])).replace(b"\x0b", b"")


def _cuts(rng: random.Random, data: bytes, most: int) -> list[bytes]:
    points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, most))))
    if data.endswith(b"\x1c\r") and rng.random() < 0.3:
        points = sorted({*points, len(data) - 1})  # the end block split from its CR
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _oversize(rng: random.Random) -> bytes:
    size = rng.randint(MAX_BYTES + 1, 4 * MAX_BYTES)
    head = rng.choice(_seeds())
    return (head + rng.randbytes(size - len(head))).translate(None, b"\x0b\x1c")


@dataclass
class Unit:
    """What one client does at once: ``writes`` (a pause between them when ``pause``), then it reads one
    answer per ``payloads`` item (the bytes the intake is given, in order)."""

    kind: str
    writes: list[bytes]
    payloads: list[bytes]
    pause: bool = False
    partial: bytes = b""  # a frame cut short by a new start block, before the payloads (see _partial_answered)


def mllp_unit(rng: random.Random, room: int) -> Unit:
    r = rng.random()
    if r < 0.80:
        p = _payload(rng, mllp=True)
        return Unit("frame", [frame(p)], [p])
    if r < 0.84:
        p = _payload(rng, mllp=True)
        return Unit("noise-before", [_noise(rng) + frame(p)], [p])
    if r < 0.86:
        p = _payload(rng, mllp=True)
        return Unit("start-flood", [b"\x0b" * rng.randint(2, 3000) + frame(p)], [p])
    if r < 0.91:
        p = _payload(rng, mllp=True)
        return Unit("split", _cuts(rng, frame(p), 6), [p], pause=True)
    if r < 0.96:
        payloads = [_payload(rng, mllp=True) for _ in range(min(room, rng.randint(2, 8)))]
        stream = b"".join((_noise(rng) if rng.random() < 0.3 else b"") + frame(p) for p in payloads)
        if rng.random() < 0.5:
            return Unit("batch", [stream], payloads)
        return Unit("batch-split", _cuts(rng, stream, 8), payloads, pause=True)
    if r < 0.97:  # a sender that reconnected mid-message: the half frame is cut short by the new one
        half = _payload(rng, mllp=True)
        p = _payload(rng, mllp=True)
        while not p.startswith(b"MSH"):
            p = _payload(rng, mllp=True)
        cut = half[: rng.randrange(len(half) + 1)]
        return Unit("abandoned", [b"\x0b" + cut + frame(p)], [p], partial=cut)
    if r < 0.98:  # control bytes that are content: an end block without CR, a start block not before MSH
        p = _payload(rng, mllp=True)
        # anywhere but first, MSH included: the ACK must not echo them (test_ack_has_no_mllp_framing_bytes)
        at = rng.randint(1, max(1, len(p)))
        p = p[:at] + rng.choice([b"\x1cX", b"\x1c\x1cZ", b"\x0bZ", b"\x0b\x00"]) + p[at:]
        return Unit("control-bytes", [frame(p)], [p])
    if r < 0.985:
        return Unit("empty", [frame(b"")], [b""])
    if r < 0.997:
        p = _payload(rng, mllp=True)
        return Unit("stray-end", [b"\x1c\r" + frame(p) + b"\x1c\r"], [p])
    # the end block in a write of its own, or split from its CR: the read that crosses the limit may end
    # with it (test_oversize_frame_with_its_end_block_split_at_the_limit); one big write is in test_mllp.py
    p = _oversize(rng)
    body = frame(p)[:-2]
    tail = [b"\x1c\r"] if rng.random() < 0.5 else [b"\x1c", b"\r"]
    if rng.random() < 0.5:
        body, tail = body + tail[0], tail[1:]
    return Unit("oversize", [*(_cuts(rng, body, 4) if rng.random() < 0.5 else [body]), *tail], [p],
                pause=True)


def _request(body: bytes, media: bytes) -> bytes:
    return (b"POST /hl7v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + media
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def http_unit(rng: random.Random) -> Unit:
    """One POST /hl7v2; ``payloads`` is empty when the request never reaches the intake (415)."""
    r = rng.random()
    media = rng.choice(HTTP_TYPES)
    if r < 0.90:
        p = _payload(rng, mllp=False)
        return Unit("post", [_request(p, media)], [p])
    if r < 0.94:
        p = _payload(rng, mllp=False)
        parts = _cuts(rng, p, 4) if len(p) > 1 else [p]
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in parts if c)
        head = (b"POST /hl7v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + media
                + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        return Unit("chunked", _cuts(rng, head + chunks + b"0\r\n\r\n", 5), [p], pause=True)
    if r < 0.97:
        p = _payload(rng, mllp=False)
        return Unit("split", _cuts(rng, _request(p, media), 4), [p], pause=True)
    if r < 0.985:
        return Unit("empty", [_request(b"", media)], [b""])
    if r < 0.996:
        p = _payload(rng, mllp=False)
        return Unit("wrong-type", [_request(p, rng.choice([b"application/json", b"", b"text/html"]))], [])
    p = _oversize(rng)
    return Unit("oversize", [_request(p, media)], [p])


# -- the client side (runs in the child process) ---------------------------------------------------------
def dead_value(payload: bytes) -> bytes:
    """What the dead letters keep of a refused input: all of it, or the head of an oversize one."""
    return payload[:HEAD_KEPT] if len(payload) > MAX_BYTES else payload


def digest(value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(value, digest_size=16).digest(), "big")


def _partial_answered(partial: bytes) -> bool:
    """Whether the listener answers a frame cut short by a new start block: when its whole MSH came
    (a segment terminator after it) and MSH-10 can be read from it."""
    from gateway.hl7v2.ack import recover_control_id

    head = partial[:8192].lstrip(b"\xef\xbb\xbf\r\n\t ")
    return head.startswith(b"MSH") and (b"\r" in head or b"\n" in head) and bool(recover_control_id(partial))


def check_ack(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of a well-formed ACK; AssertionError with the reason otherwise."""
    assert ack.startswith(b"MSH"), f"ACK does not start with MSH: {ack[:40]!r}"
    try:
        msg = parse(ack)
    except CharsetError:
        # the ACK echoes the sender's MSH-3..6 in the sender's charset: a few echoed bytes that look like
        # UTF-8 under MSH-18 8859/1 are refused by our own parser's "UTF-8 sent as 8859/1" guess
        msg = parse_text(ack.decode("latin-1"))
    except ParseError as exc:
        raise AssertionError(f"ACK does not parse ({exc.message}): {ack[:80]!r}") from None
    assert msg.segment_ids[:2] == ["MSH", "MSA"], f"ACK segments {msg.segment_ids}"
    msa = msg.first("MSA")
    assert msa is not None
    code = msa.get(1)
    assert code in ACK_CODES, f"MSA-1 {code!r}"
    assert code == "AA" or msg.first("ERR") is not None, f"{code} without ERR"
    return code, msa.get(2)


@dataclass
class Tally:
    """What the clients saw, sent back to the test."""

    inputs: Counter[str] = field(default_factory=Counter)  # per transport
    units: Counter[str] = field(default_factory=Counter)  # per transport:kind
    codes: Counter[str] = field(default_factory=Counter)  # per transport:MSA-1
    status: Counter[int] = field(default_factory=Counter)  # HTTP status codes
    refused: dict[str, list[int]] = field(default_factory=dict)  # peer -> [count, sum of digests]
    problems: list[str] = field(default_factory=list)
    max_wait_s: float = 0.0
    warmed: int = 0  # MLLP connections past their warm-up
    sentinels: int = 0
    slow: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    partials_answered: int = 0  # cut frames answered AR (and dead-lettered)
    partials_silent: int = 0  # cut frames dead-lettered without an answer

    def answered(self, transport: str, code: str, peer: str, payload: bytes) -> None:
        self.codes[f"{transport}:{code}"] += 1
        if code != "AA":
            self.dead(peer, payload)

    def dead(self, peer: str, payload: bytes) -> None:
        entry = self.refused.setdefault(peer, [0, 0])
        entry[0] += 1
        entry[1] = (entry[1] + digest(dead_value(payload))) % (1 << 128)

    @property
    def done(self) -> int:
        return sum(self.inputs.values())


def _peer(writer: asyncio.StreamWriter) -> str:
    host, port = writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _send(writer: asyncio.StreamWriter, unit: Unit) -> None:
    for n, data in enumerate(unit.writes):
        writer.write(data)
        if unit.pause and n < len(unit.writes) - 1:
            await writer.drain()
            await asyncio.sleep(0.002)
    await writer.drain()


async def _timed(tally: Tally, coro: Any) -> Any:
    started = time.monotonic()
    try:
        return await asyncio.wait_for(coro, ACK_DEADLINE_S)
    except TimeoutError:
        raise AssertionError(f"no answer within {ACK_DEADLINE_S:.0f} s") from None
    finally:
        tally.max_wait_s = max(tally.max_wait_s, time.monotonic() - started)


async def _mllp_ack(reader: asyncio.StreamReader) -> bytes:
    data = await reader.readuntil(b"\x1c\r")
    assert data[:1] == b"\x0b", f"bad ACK framing {data[:40]!r}"
    assert data.count(b"\x0b") == 1, f"a start block inside an ACK {data[:80]!r}"
    assert data.count(b"\x1c") == 1, f"an end block inside an ACK {data[:80]!r}"
    return data[1:-2]


async def mllp_client(n: int, port: int, quota: int, tally: Tally) -> None:
    rng = random.Random(f"{SEED}:mllp:{n}")
    reader, writer = await _open(port)
    peer = _peer(writer)
    try:
        for k in range(WARM_UP):
            control_id = f"WARM-{n}-{k}"
            writer.write(frame(er_message(600_000 + n * WARM_UP + k, control_id=control_id)))
            assert check_ack(await _timed(tally, _mllp_ack(reader))) == ("AA", control_id), f"mllp {n}: warm-up"
            tally.answered("mllp", "AA", peer, b"")
            tally.inputs["mllp"] += 1
        tally.warmed += 1
        sent = WARM_UP
        units = 0
        while sent < quota:
            unit = mllp_unit(rng, quota - sent)
            units += 1
            tally.units[f"mllp:{unit.kind}"] += 1
            await _send(writer, unit)
            if unit.partial.strip():  # a cut frame: dead-lettered; answered AR when its whole MSH came
                if _partial_answered(unit.partial):
                    code, _ = check_ack(await _timed(tally, _mllp_ack(reader)))
                    if code != "AR":
                        tally.problems.append(f"mllp cut frame answered {code}")
                    tally.answered("mllp", code, peer, unit.partial)
                    tally.partials_answered += 1
                else:
                    tally.dead(peer, unit.partial)
                    tally.partials_silent += 1
            for payload in unit.payloads:
                try:
                    ack = await _timed(tally, _mllp_ack(reader))
                except (AssertionError, asyncio.IncompleteReadError) as exc:
                    raise AssertionError(f"mllp {n}, unit {units} ({unit.kind}): {exc!r}") from exc
                try:
                    code, _ = check_ack(ack)
                except AssertionError as exc:
                    tally.problems.append(f"mllp {unit.kind}: {exc}")
                    code = "bad"
                tally.answered("mllp", code, peer, payload)
                tally.inputs["mllp"] += 1
            sent += len(unit.payloads)
        control_id = f"STORM-MLLP-{n}"
        writer.write(frame(er_message(900_000 + n, control_id=control_id)))
        assert check_ack(await _timed(tally, _mllp_ack(reader))) == ("AA", control_id), f"mllp {n}: out of step"
        tally.sentinels += 1
    finally:
        writer.close()


async def _http_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def http_client(n: int, port: int, quota: int, tally: Tally) -> None:
    rng = random.Random(f"{SEED}:http:{n}")
    reader, writer = await _open(port)
    try:
        for _ in range(quota):
            unit = http_unit(rng)
            tally.units[f"http:{unit.kind}"] += 1
            await _send(writer, unit)
            status, headers, body = await _timed(tally, _http_response(reader))
            tally.status[status] += 1
            tally.inputs["http"] += 1
            if not unit.payloads:
                if status != 415:
                    tally.problems.append(f"http {unit.kind}: status {status}, expected 415")
                continue
            try:
                assert status == 200, f"status {status}"
                code, _ = check_ack(body)
                assert headers.get("x-hl7-ack-code") == code, "X-HL7-Ack-Code differs from MSA-1"
            except AssertionError as exc:
                tally.problems.append(f"http {unit.kind}: {exc}")
                code = "bad"
            tally.answered("http", code, _peer(writer), unit.payloads[0])
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await _open(port)
        control_id = f"STORM-HTTP-{n}"
        writer.write(_request(er_message(950_000 + n, control_id=control_id), HTTP_TYPES[0]))
        status, _, body = await _timed(tally, _http_response(reader))
        assert status == 200, f"http {n}: status {status}"
        assert check_ack(body) == ("AA", control_id), f"http {n}: out of step"
        tally.sentinels += 1
    finally:
        writer.close()


async def _silent(port: int, first: bytes, limit_s: float) -> float | None:
    """Send ``first`` and go silent: seconds until the server closes the connection (None: still open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first)
        await writer.drain()
        started = time.monotonic()
        try:
            data = await asyncio.wait_for(reader.read(65536), limit_s)
        except TimeoutError:
            return None
        except ConnectionError:
            data = b""
        assert data == b"", f"a silent client got {data[:60]!r}"
        return round(time.monotonic() - started, 2)
    finally:
        writer.close()


async def _non_reader(port: int, tally: Tally, stop: asyncio.Event) -> None:
    """Sends refused frames and never reads an ACK, until its writes block; holds on until ``stop``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _, writer = await asyncio.open_connection(sock=sock)
    info: dict[str, Any] = {"peer": _peer(writer), "frames": 0}
    tally.slow["non_reader"] = info
    started = time.monotonic()
    try:
        batch = frame(b"NEVER-READS " + bytes(range(32, 127)) * 20) * 50
        while info["frames"] < 50_000:
            writer.write(batch)
            try:
                await asyncio.wait_for(writer.drain(), 2.0)
            except TimeoutError:
                info["stalled_after_s"] = round(time.monotonic() - started, 2)
                info["inputs_done_at_stall"] = tally.done
                break
            info["frames"] += 50
        await stop.wait()
    finally:
        writer.transport.abort()


async def storm(mllp_port: int, http_port: int, report: Callable[[int, bool], None]) -> Tally:
    tally = Tally()
    started = time.monotonic()
    stop = asyncio.Event()
    half = frame(er_message(1))[:500]
    slow = {
        "mllp_half_frame": [asyncio.create_task(_silent(mllp_port, half, IDLE_TIMEOUT_S + 60)) for _ in range(3)],
        "mllp_silent": [asyncio.create_task(_silent(mllp_port, b"", IDLE_TIMEOUT_S + 60))],
        # closed by PIVOT_HTTP_REQUEST_TIMEOUT_S (test_a_silent_http_connection_is_closed)
        "http_half_headers": [asyncio.create_task(_silent(http_port, b"POST /hl7v2 HTTP/1.1\r\nHost: x\r\nCont",
                                                          STORM_DEADLINE_S))],
    }
    non_reader = asyncio.create_task(_non_reader(mllp_port, tally, stop))

    async def progress() -> None:
        while True:
            report(tally.done, tally.warmed == MLLP_CONNECTIONS)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(progress())
    mllp_inputs = INPUTS - HTTP_INPUTS
    clients = [mllp_client(n, mllp_port, mllp_inputs // MLLP_CONNECTIONS + (n < mllp_inputs % MLLP_CONNECTIONS),
                           tally) for n in range(MLLP_CONNECTIONS)]
    clients += [http_client(n, http_port, HTTP_INPUTS // HTTP_CONNECTIONS + (n < HTTP_INPUTS % HTTP_CONNECTIONS),
                            tally) for n in range(HTTP_CONNECTIONS)]
    deadlined = [asyncio.wait_for(client, STORM_DEADLINE_S) for client in clients]  # each connection's deadline
    for outcome in await asyncio.gather(*deadlined, return_exceptions=True):
        if isinstance(outcome, BaseException):
            tally.problems.append("client failed: " + "".join(traceback.format_exception_only(outcome)).strip())
    tally.elapsed_s = round(time.monotonic() - started, 1)
    stop.set()
    await non_reader
    for name, tasks in slow.items():
        for task in tasks:
            if not task.done():
                task.cancel()
        tally.slow[name] = [t.result() if not t.cancelled() else None for t in
                            (await asyncio.wait(tasks))[0]]
    reporter.cancel()
    report(tally.done, True)
    return tally


def client_process(conn: Connection, mllp_port: int, http_port: int) -> None:
    """The child process: runs the storm; sends ("progress", (inputs answered, warmed up)) every second and
    ("done", Tally) at the end."""
    try:
        _seeds()
        tally = asyncio.run(storm(mllp_port, http_port, lambda n, warm: conn.send(("progress", (n, warm)))))
        conn.send(("done", tally))
    except BaseException:
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


# -- the gateway side (this process) ---------------------------------------------------------------------
def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    found = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(found["VmRSS"].split()[0]) / 1024, int(found["VmHWM"].split()[0]) / 1024


class LogCounter(logging.Handler):
    """Counts records per level; keeps those at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: Counter[str] = Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 20:
            self.errors.append(f"{record.name}: {record.getMessage()}"
                               + (f" [{record.exc_info[0].__name__}]" if record.exc_info and record.exc_info[0]
                                  else ""))


@dataclass
class Stack:
    gateway: Any
    mllp: Any
    http_port: int
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The gateway serving MLLP and HTTP from one event loop in a thread, as ``pivot serve`` does."""
    import uvicorn

    from connectors.mllp import MllpServer
    from gateway.app import Gateway, create_app
    from gateway.http.server import request_deadline_protocol
    from gateway.settings import load_settings

    gw = Gateway(load_settings(data_dir=tmp_path / "var", workers=False, mllp_max_message_bytes=MAX_BYTES,
                               mllp_idle_timeout_s=IDLE_TIMEOUT_S))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="storm-gateway", daemon=True)
    thread.start()
    mllp = MllpServer(gw.intake, host="127.0.0.1", port=0, max_message_bytes=gw.settings.mllp_max_message_bytes,
                      idle_timeout_s=gw.settings.mllp_idle_timeout_s, metrics=gw.metrics)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so (else Nagle and delayed ACKs
    # hold every response back 40 ms, as uvicorn writes headers and body separately)
    http_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    http_sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(gw), log_config=None, log_level="warning", access_log=False,
                                           lifespan="off", timeout_graceful_shutdown=2,
                                           http=request_deadline_protocol(IDLE_TIMEOUT_S)))
    st = Stack(gw, mllp, int(http_sock.getsockname()[1]), loop)
    serving: Any = None
    try:
        st.call(mllp.start())
        serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[http_sock]), loop)
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        yield st
    finally:
        server.should_exit = True
        if serving is not None:
            serving.result(15)
        st.call(mllp.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        http_sock.close()
        gw.close()


def _good_over_mllp(port: int, control_id: str) -> tuple[str, str]:
    from tests.e2e_helpers import FrameReader

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame(er_message(990_001, control_id=control_id)))
        return check_ack(FrameReader(sock).frame(timeout_s=10))


def _good_over_http(port: int, control_id: str) -> tuple[str, str]:
    import httpx

    resp = httpx.post(f"http://127.0.0.1:{port}/hl7v2", content=er_message(990_002, control_id=control_id),
                      headers={"Content-Type": "x-application/hl7-v2+er7"}, timeout=10)
    assert resp.status_code == 200
    return check_ack(resp.content)


def _dead_letters(gw: Any) -> tuple[dict[str, list[int]], Counter[str]]:
    """Dead letters per source_ref: [count, sum of digests]; and the count per transport."""
    per_peer: dict[str, list[int]] = {}
    transports: Counter[str] = Counter()
    consumer = gw.log.consumer("storm-check", [gw.settings.topic("deadletter")])
    try:
        while records := consumer.poll(0.05, 5000):
            for rec in records:
                entry = per_peer.setdefault(rec.headers["source_ref"], [0, 0])
                entry[0] += 1
                entry[1] = (entry[1] + digest(rec.value)) % (1 << 128)
                transports[rec.headers["transport"]] += 1
    finally:
        consumer.close()
    return per_peer, transports


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_storm_over_mllp_and_http(stack: Stack) -> None:
    gw = stack.gateway
    counter = LogCounter()
    root, pivot = logging.getLogger(), logging.getLogger("pivot")
    root.addHandler(counter)
    # the refusals' WARNINGs (charset fallback, invalid NAM…) would pile up in pytest's log capture and
    # be counted as the gateway's memory: counted here instead, and not passed on
    pivot.addHandler(counter)
    pivot.propagate = False
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=client_process, args=(theirs, stack.mllp.port, stack.http_port),
                        name="storm-clients", daemon=True)
    timeline: list[tuple[float, int, float]] = []  # (s, inputs answered, VmRSS MB)
    baseline: float | None = None
    baseline_at = 0
    tally: Tally | None = None
    started = time.monotonic()
    try:
        child.start()
        theirs.close()
        while tally is None:
            elapsed = time.monotonic() - started
            if elapsed > STORM_DEADLINE_S + 30:
                pytest.fail(f"the storm did not end within {STORM_DEADLINE_S + 30:.0f} s (hang)")
            if not ours.poll(0.5):
                if not child.is_alive():
                    pytest.fail(f"the client process died (exit code {child.exitcode})")
                continue
            kind, value = ours.recv()
            if kind == "crash":
                pytest.fail(f"the client process failed:\n{value}")
            if kind == "done":
                tally = value
                continue
            done, warm = value
            rss = rss_mb()[0]
            timeline.append((round(elapsed, 1), done, round(rss, 1)))
            if baseline is None and warm:  # MapCache full; thread pools, SQLite connections and caches started
                baseline, baseline_at = rss, done
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
        pivot.propagate = True
        pivot.removeHandler(counter)
        root.removeHandler(counter)
    after_storm, peak = rss_mb()
    assert baseline is not None

    # after the storm the listener still answers a good message with AA, on both transports
    assert _good_over_mllp(stack.mllp.port, "AFTER-STORM-MLLP") == ("AA", "AFTER-STORM-MLLP")
    assert _good_over_http(stack.http_port, "AFTER-STORM-HTTP") == ("AA", "AFTER-STORM-HTTP")

    summary = {
        "inputs": dict(tally.inputs), "codes": dict(tally.codes), "http_status": dict(tally.status),
        "storm_s": tally.elapsed_s, "max_ack_wait_s": round(tally.max_wait_s, 2), "slow": tally.slow,
        "rss_mb": {"baseline": round(baseline, 1), "baseline_at": baseline_at, "after": round(after_storm, 1),
                   "peak": round(peak, 1)},
        "timeline": timeline[:: max(1, len(timeline) // 12)], "logs": dict(counter.levels),
        "units": dict(tally.units), "cut_frames": {"answered": tally.partials_answered,
                                                   "dead_letter_only": tally.partials_silent},
    }
    print("\nstorm:", summary)

    # no crash, no hang; every input answered once, with a well-formed ACK
    assert tally.problems == [], tally.problems[:10]
    assert tally.done == INPUTS
    assert tally.inputs["http"] == HTTP_INPUTS
    assert set(tally.units) == UNIT_KINDS  # every kind of input, whatever the storm's size
    assert tally.partials_answered > 0
    assert tally.partials_silent > 0
    assert tally.sentinels == MLLP_CONNECTIONS + HTTP_CONNECTIONS
    assert tally.max_wait_s < ACK_DEADLINE_S

    # every refused input is in the dead letters, byte for byte (the head of an oversize one)
    non_reader = tally.slow["non_reader"]
    per_peer, transports = _dead_letters(gw)
    parked = per_peer.pop(non_reader["peer"], [0, 0])[0]  # the never-reading client's frames that got in
    assert per_peer == tally.refused
    refusals = sum(n for key, n in tally.codes.items() if not key.endswith(":AA"))
    assert sum(n for n, _ in per_peer.values()) == refusals + tally.partials_silent
    assert gw.metrics.total("pivot_deadletters_total") == refusals + tally.partials_silent + parked
    answered = tally.done - tally.status.get(415, 0) + tally.sentinels + parked + 2 + tally.partials_answered
    assert gw.metrics.total("pivot_messages_total") == answered
    assert transports["http"] == sum(n for key, n in tally.codes.items() if key in ("http:AE", "http:AR"))

    # slow and silent clients: closed by the idle timeout, and the others were never held up
    for name in ("mllp_half_frame", "mllp_silent", "http_half_headers"):
        for closed_after in tally.slow[name]:
            assert closed_after is not None, f"{name}: never closed"
            assert IDLE_TIMEOUT_S - 0.5 <= closed_after <= IDLE_TIMEOUT_S + 10, (name, closed_after)
    assert "stalled_after_s" in non_reader, "the never-reading client was never held back"
    assert tally.done - non_reader["inputs_done_at_stall"] > INPUTS // 2  # the rest went on meanwhile

    # nothing escaped into the logs at ERROR level
    assert counter.errors == []

    # memory bounded
    assert after_storm - baseline < RSS_GROWTH_LIMIT_MB, f"RSS grew by {after_storm - baseline:.0f} MB"


# -- what the storm found: gateway defects, fixed, each pinned here --------------------------------------
def test_oversize_frame_with_its_end_block_split_at_the_limit() -> None:
    from connectors.mllp import FrameParser

    parser = FrameParser(1024)
    following = er_message(1)
    got = [item for chunk in (b"\x0b" + b"A" * 1000, b"B" * 100 + b"\x1c", b"\r" + frame(following))
           for item in parser.feed(chunk)]
    assert [oversize for _, oversize in got] == [True, False]
    assert got[1][0] == following


def test_ack_has_no_mllp_framing_bytes() -> None:
    from connectors.mllp import FrameParser
    from gateway.errors import MapError
    from gateway.hl7v2.ack import build_ack

    raw = er_message(1, control_id="HSA1\x1c").replace(b"|URGENCE|", b"|URG\x0bENCE|", 1)
    ack = build_ack("AE", msg=parse(raw), error=MapError("refused"))
    assert b"\x0b" not in ack
    assert b"\x1c" not in ack
    assert list(FrameParser(1 << 20).feed(frame(ack))) == [(ack, False)]


def test_a_client_that_never_reads_its_acks_is_closed() -> None:
    from connectors.mllp import MllpServer
    from tests.test_connectors_contract import RecordingReceiver

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MllpServer(RecordingReceiver(), host="127.0.0.1", port=0, idle_timeout_s=1.0)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.settimeout(1.0)
        assert _send_until_blocked(sock, frame(er_message(1)) * 50)  # the server stopped reading: no room for ACKs
        deadline = time.monotonic() + server.idle_timeout_s + 2
        while server.active_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.active_connections == 0
    finally:
        sock.close()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _send_until_blocked(sock: socket.socket, data: bytes) -> bool:
    for _ in range(2000):
        try:
            sock.sendall(data)
        except (TimeoutError, ConnectionError):
            return True
    return False


def test_an_http_client_leaving_mid_body_logs_no_error(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=5) as sock:
        sock.sendall(_request(er_message(1), HTTP_TYPES[0])[:-300])
        time.sleep(0.3)
    assert _good_over_http(stack.http_port, "AFTER-LEAVER") == ("AA", "AFTER-LEAVER")
    time.sleep(0.3)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_silent_http_connection_is_closed(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=IDLE_TIMEOUT_S + 2) as sock:
        sock.sendall(b"POST /hl7v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        try:
            closed = sock.recv(100) == b""
        except TimeoutError:
            closed = False
    assert closed


def test_an_oversize_http_body_is_not_held_in_memory(stack: Stack) -> None:
    size_mb = 48
    before = rss_mb()[0]
    most = before
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=30) as sock:
        sock.sendall(b"POST /hl7v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: "
                     + str(size_mb << 20).encode() + b"\r\n\r\n")
        chunk = er_message(1) + b"X" * ((1 << 20) - len(er_message(1)))
        for _ in range(size_mb):
            sock.sendall(chunk)
            most = max(most, rss_mb()[0])
        status, headers, _ = asyncio.run(_read_response(sock))
        most = max(most, rss_mb()[0])
    assert (status, headers.get("x-hl7-ack-code")) == (200, "AR")
    assert most - before < 16, f"RSS grew by {most - before:.0f} MB for a {size_mb} MB body"


async def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(sock=sock.dup())
    try:
        return await _http_response(reader)
    finally:
        writer.close()


def test_metrics_do_not_grow_with_made_up_senders(stack: Stack) -> None:
    from connectors.base import Origin

    origin = Origin("mllp", "127.0.0.1:1")
    before = len(stack.gateway.metrics.render().splitlines())
    for n in range(300):
        stack.gateway.intake.receive(b"MSH|^~\\&|APP%d|FAC%d|PIVOT|X|20260101||ADT^A04|%d|P|2.5.1\rZZZ|" % (n, n, n),
                                     origin)
    assert len(stack.gateway.metrics.render().splitlines()) - before < 50

"""MLLP listener (asyncio): HL7v2 over TCP, framed ``\\x0b`` message ``\\x1c\\x0d`` (HL7 MLLP release 2).

What real feeds do, and what this listener does about it:

- a frame split over several reads, or several frames in one read → a :class:`FrameParser` keeps
  a buffer and yields whole frames in order;
- bytes between frames (noise, a stray CR/LF, stray end blocks) → dropped and counted
  (``pivot_mllp_noise_bytes_total``), never answered;
- a flood of start bytes (``\\x0b\\x0b\\x0b…MSH``) → the frame starts at the last start byte; a
  start byte followed by ``MSH`` inside a frame ends the unfinished frame before it (a sender that
  reconnected mid-message): that partial frame goes to the intake's ``refuse`` (dead letter; AR
  when its whole MSH came), then the new frame is handled as usual; any other stray start byte is
  content (the intake refuses it);
- a frame larger than ``max_message_bytes`` → its first 64 KB are kept, the rest skipped up to
  the end block, and the intake answers AR (MSA-2 recovered from the head, which is kept as a
  dead letter);
- a frame not complete ``frame_timeout_s`` after its start block → the connection is closed,
  however many bytes trickle in meanwhile; between frames, ``idle_timeout_s`` counts from the
  last frame (stray bytes do not restart it); inside a frame, silence longer than
  ``idle_timeout_s`` closes it too;
- connection slots (connectors/mllp_admission.py): at most ``max_connections_per_peer`` per IP
  address; when all ``max_connections`` are taken, the oldest connection that never had a
  message accepted gives its slot to the newcomer, else the newcomer is closed (logged, counted).
  The same class keeps the per-address cap fair to a sender reconnecting over a half-open socket.

TLS: given an ``ssl.SSLContext`` the listener speaks MLLP over TLS (the handshake must finish
within ``handshake_timeout_s``; an untrusted or missing client certificate, when the context
demands one, fails it and the message never reaches the intake). ``identify`` maps the peer
certificate (``getpeercert()``) to the sender identity put in ``Origin.identity`` (default: the
subject CN).

Per connection, messages are handled one at a time in arrival order, so ACKs come back in order.
The intake call blocks until the message is durable; it runs in a thread pool so that one slow
connection never blocks the others. Enhanced mode (MSH-15/16) gives a commit ACK and then an
application ACK: both are written back on the same connection, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum
from typing import Any

from connectors.base import Origin, Receiver, Reply
from connectors.mllp_admission import Admission, Slot
from gateway.errors import GatewayError, IncompleteFrameError, ParseError
from gateway.metrics import Metrics

log = logging.getLogger("pivot.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
FRAME_END = END_BLOCK + CARRIAGE_RETURN
RESTART = START_BLOCK + b"MSH"  # a start block that begins a message, even inside an unfinished frame
TRANSPORT = "mllp"
_HEAD_KEPT = 64 * 1024
_READ_SIZE = 65536


def frame(payload: bytes) -> bytes:
    """``payload`` wrapped in an MLLP frame."""
    return START_BLOCK + payload + FRAME_END


class FrameStatus(IntEnum):
    """What a :class:`FrameParser` item is (an int: ``False``/``True`` compare as COMPLETE/OVERSIZE)."""

    COMPLETE = 0
    OVERSIZE = 1  # longer than max_bytes: the payload is its head
    INCOMPLETE = 2  # interrupted by a new start block before its end block (head when oversize)


class FrameParser:
    """Incremental MLLP de-framer: ``feed(data)`` yields ``(payload, status)`` for each frame.

    ``status`` (:class:`FrameStatus`) is OVERSIZE when the frame exceeded ``max_bytes`` (the payload
    is then only its head) and INCOMPLETE for a frame a new message's start block cut short.
    ``noise`` counts the bytes dropped outside frames; ``started`` the frames begun; ``in_frame``
    says whether one is begun and not ended.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversize frame: dropping bytes up to the end block
        self._head = b""
        self.noise = 0
        self.started = 0

    @property
    def in_frame(self) -> bool:
        return self._in_frame or self._skipping

    def feed(self, data: bytes) -> Iterator[tuple[bytes, FrameStatus]]:
        self._buf.extend(data)
        while True:
            item = self._next()
            if item is None:
                return
            yield item

    def _next(self) -> tuple[bytes, FrameStatus] | None:
        buf = self._buf
        while True:
            if self._skipping:
                return self._skip()
            if not self._in_frame:
                start = buf.find(START_BLOCK)
                if start < 0:
                    self.noise += len(buf)
                    buf.clear()
                    return None
                self.noise += start
                del buf[: start + 1]
                self._in_frame = True
                self.started += 1
            lead = 0
            while lead < len(buf) and buf[lead] == START_BLOCK[0]:  # a flood of start bytes
                lead += 1
            if lead:
                self.noise += lead
                del buf[:lead]
            end = buf.find(FRAME_END)
            restart = buf.find(RESTART, 0, end if end >= 0 else len(buf))
            if restart >= 0:  # a new message started before this one ended: this one is incomplete
                partial = bytes(buf[:restart]).rstrip(START_BLOCK)
                del buf[: restart + 1]
                self.started += 1
                if partial.strip():
                    return self._cut(partial), FrameStatus.INCOMPLETE
                self.noise += restart
                continue
            if end < 0:
                if len(buf) > self.max_bytes:
                    self._head = bytes(buf[:_HEAD_KEPT])
                    self._skipping = True
                    self._in_frame = False
                    del buf[: len(buf) - _tail_kept(buf)]
                return None
            payload = bytes(buf[:end])
            del buf[: end + 2]
            self._in_frame = False
            if len(payload) > self.max_bytes:
                return payload[:_HEAD_KEPT], FrameStatus.OVERSIZE
            return payload, FrameStatus.COMPLETE

    def _skip(self) -> tuple[bytes, FrameStatus] | None:
        """Inside an oversize frame: up to its end block, or to a new message's start block."""
        buf = self._buf
        end = buf.find(FRAME_END)
        restart = buf.find(RESTART, 0, end if end >= 0 else len(buf))
        if restart >= 0:
            del buf[: restart + 1]
            self._skipping, self._in_frame = False, True
            self.started += 1
            return self._head, FrameStatus.INCOMPLETE
        if end < 0:
            del buf[: len(buf) - _tail_kept(buf)]
            return None
        del buf[: end + 2]
        self._skipping = False
        return self._head, FrameStatus.OVERSIZE

    def _cut(self, payload: bytes) -> bytes:
        return payload[:_HEAD_KEPT] if len(payload) > self.max_bytes else payload


def _tail_kept(buf: bytearray) -> int:
    """How many of the last bytes may begin an end block or a restart whose rest is in the next read."""
    for size in range(len(RESTART) - 1, 0, -1):
        if buf.endswith(RESTART[:size]):
            return size
    return 1 if buf.endswith(END_BLOCK) else 0


class MllpServer:
    """The MLLP connector: ``start()`` listens (``port`` is then the bound port), ``stop()`` closes."""

    name = "mllp"

    def __init__(self, receiver: Receiver, *, host: str, port: int, max_message_bytes: int = 2 * 1024 * 1024,
                 idle_timeout_s: float = 300.0, max_connections: int = 200, metrics: Metrics | None = None,
                 workers: int = 32, ssl_context: ssl.SSLContext | None = None,
                 identify: Callable[[dict[str, Any] | None], str] | None = None,
                 handshake_timeout_s: float = 10.0, frame_timeout_s: float = 30.0,
                 max_connections_per_peer: int | None = None) -> None:
        self.receiver = receiver
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_connections = max_connections
        self.admission = Admission(max_connections, max_connections_per_peer or max_connections)
        self.metrics = metrics or Metrics()
        self.ssl_context = ssl_context
        self.identify = identify or _subject_cn
        self.handshake_timeout_s = handshake_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pivot-mllp")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        tls: dict[str, Any] = ({"ssl": self.ssl_context, "ssl_handshake_timeout": self.handshake_timeout_s}
                               if self.ssl_context is not None else {})
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=_READ_SIZE, **tls)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("MLLP listening on %s:%d%s", self.host, self.port, " (TLS)" if self.ssl_context else "")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._pool.shutdown(wait=True)

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        slot = Slot(peer.rpartition(":")[0] or peer, asyncio.get_running_loop().time(), writer.transport.abort)
        refused, evicted = self.admission.admit(slot)
        if refused:
            log.warning("MLLP connection refused (%s: %d per address, %d in all) peer=%s", refused,
                        self.admission.max_per_peer, self.max_connections, peer)
            self.metrics.inc("pivot_mllp_connections_refused_total", help_text="connections over a limit",
                             reason=refused)
            writer.close()
            return
        if evicted is not None:
            log.info("MLLP connection evicted for a newcomer (no message accepted on it) peer=%s", peer)
            self.metrics.inc("pivot_mllp_connections_evicted_total",
                             help_text="connections that never had a message accepted, closed for a newcomer")
        self._connections.add(task)
        self.metrics.inc("pivot_mllp_connections_total", help_text="MLLP connections accepted")
        try:
            await self._connection(reader, writer, peer, slot)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("MLLP connection lost peer=%s", peer)
        except asyncio.CancelledError:
            pass
        finally:
            self.admission.release(slot)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                          slot: Slot) -> None:
        parser = FrameParser(self.max_message_bytes)
        identity = ""
        if self.ssl_context is not None:
            cert = writer.get_extra_info("peercert")
            identity = self.identify(cert if isinstance(cert, dict) and cert else None)
        origin = Origin(TRANSPORT, peer, identity=identity)
        loop = asyncio.get_running_loop()
        last_frame = frame_start = loop.time()  # between frames, idle counts from the last frame ended
        starts = 0
        while True:
            wait, why = self._wait(parser.in_frame, last_frame, frame_start, loop.time())
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), wait) if wait > 0 else None
            except TimeoutError:
                data = None
            if data is None:
                self._timed_out(why, peer)
                return
            if not data:
                return
            read_at = loop.time()
            noise_before = parser.noise
            for payload, status in parser.feed(data):
                if not await self._answer(payload, status, origin, writer, slot):
                    return
                last_frame = loop.time()
            if parser.started != starts:  # a frame began in this read: its deadline runs from now
                starts, frame_start = parser.started, read_at
            if parser.noise > noise_before:
                self.metrics.inc("pivot_mllp_noise_bytes_total", parser.noise - noise_before,
                                 help_text="bytes outside MLLP frames, dropped")

    def _wait(self, in_frame: bool, last_frame: float, frame_start: float, now: float) -> tuple[float, str]:
        """How long the next read may wait, and what ends the connection if nothing comes."""
        if not in_frame:
            return last_frame + self.idle_timeout_s - now, "idle"
        left = frame_start + self.frame_timeout_s - now
        return (left, "frame") if left < self.idle_timeout_s else (self.idle_timeout_s, "idle")

    def _timed_out(self, why: str, peer: str) -> None:
        if why == "frame":
            log.info("MLLP frame not complete %.0fs after its start block peer=%s: closed", self.frame_timeout_s,
                     peer)
            self.metrics.inc("pivot_mllp_frame_timeouts_total",
                             help_text="connections closed with a frame not complete by its deadline")
        else:
            log.info("MLLP idle timeout peer=%s after %.0fs", peer, self.idle_timeout_s)

    async def _answer(self, payload: bytes, status: FrameStatus, origin: Origin, writer: asyncio.StreamWriter,
                      slot: Slot) -> bool:
        """The intake's answer to one frame, written back; False when the client does not read its ACKs."""
        loop = asyncio.get_running_loop()
        slot.busy = True
        try:
            if status is FrameStatus.COMPLETE:
                reply: Reply = await loop.run_in_executor(self._pool, self.receiver.receive, payload, origin)
            else:
                reply = await loop.run_in_executor(self._pool, self.receiver.refuse, payload,
                                                   self._frame_error(status), origin)
        finally:
            slot.busy = False
        if reply.code == "AA" and status is FrameStatus.COMPLETE:
            self.admission.proven(slot)
        for ack in reply.acks:
            writer.write(frame(ack))
        try:  # a client that stops reading its ACKs must not hold its slot for ever
            await asyncio.wait_for(writer.drain(), self.idle_timeout_s)
        except TimeoutError:
            log.info("MLLP client not reading its ACKs peer=%s after %.0fs: closed", origin.peer,
                     self.idle_timeout_s)
            writer.transport.abort()
            return False
        return True

    def _frame_error(self, status: FrameStatus) -> GatewayError:
        if status is FrameStatus.INCOMPLETE:
            return IncompleteFrameError("MLLP frame incomplete: a new start block came before its end block")
        return ParseError(f"message larger than the {self.max_message_bytes}-byte limit", hl7_code="207")


def _subject_cn(cert: dict[str, Any] | None) -> str:
    """The subject CN of a peer certificate (``getpeercert()`` form); '' without one."""
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return ""


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info or "")

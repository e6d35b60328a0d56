"""MLLP listener (asyncio): HL7v2 over TCP, framed ``\\x0b`` message ``\\x1c\\x0d`` (HL7 MLLP release 2).

What real feeds do, and what this listener does about it:

- a frame split over several reads, or several frames in one read → a :class:`FrameParser` keeps
  a buffer and yields whole frames in order;
- bytes between frames (noise, a stray CR/LF, a half frame after a reconnect) → dropped and
  counted (``pivot_mllp_noise_bytes_total``), never answered;
- a flood of start bytes (``\\x0b\\x0b\\x0b…MSH``) → the frame starts at the last start byte; a
  start byte followed by ``MSH`` inside a frame abandons the unfinished frame before it (a sender
  that reconnected mid-message); any other stray start byte is content (the intake refuses it);
- a frame larger than ``max_message_bytes`` → its first 64 KB are kept, the rest skipped up to
  the end block, and the intake answers AR (MSA-2 recovered from the head, which is kept as a
  dead letter);
- a silent connection → closed after ``idle_timeout_s``; more than ``max_connections`` at once →
  the newcomer is closed at once (logged, counted).

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
from typing import Any

from connectors.base import Origin, Receiver, Reply
from gateway.errors import ParseError
from gateway.metrics import Metrics

log = logging.getLogger("pivot.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
FRAME_END = END_BLOCK + CARRIAGE_RETURN
TRANSPORT = "mllp"
_HEAD_KEPT = 64 * 1024
_READ_SIZE = 65536


def frame(payload: bytes) -> bytes:
    """``payload`` wrapped in an MLLP frame."""
    return START_BLOCK + payload + FRAME_END


class FrameParser:
    """Incremental MLLP de-framer: ``feed(data)`` yields ``(payload, oversize)`` for each whole frame.

    ``oversize`` is true when the frame exceeded ``max_bytes``: the payload is then only its head.
    ``noise`` counts the bytes dropped outside frames.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversize frame: dropping bytes up to the end block
        self._head = b""
        self.noise = 0

    def feed(self, data: bytes) -> Iterator[tuple[bytes, bool]]:
        self._buf.extend(data)
        while True:
            item = self._next()
            if item is None:
                return
            yield item

    def _next(self) -> tuple[bytes, bool] | None:
        buf = self._buf
        if self._skipping:
            end = buf.find(FRAME_END)
            if end < 0:
                keep = 1 if buf.endswith(END_BLOCK) else 0  # an end block split from its CR
                del buf[: len(buf) - keep]
                return None
            del buf[: end + 2]
            self._skipping = False
            return self._head, True
        if not self._in_frame:
            start = buf.find(START_BLOCK)
            if start < 0:
                self.noise += len(buf)
                buf.clear()
                return None
            self.noise += start
            del buf[: start + 1]
            self._in_frame = True
        lead = 0
        while lead < len(buf) and buf[lead] == START_BLOCK[0]:  # a flood of start bytes
            lead += 1
        if lead:
            self.noise += lead
            del buf[:lead]
        end = buf.find(FRAME_END)
        restart = buf.rfind(START_BLOCK + b"MSH", 0, end if end >= 0 else len(buf))
        if restart >= 0:  # a new message started before this one ended: the first is abandoned
            self.noise += restart + 1
            del buf[: restart + 1]
            end = buf.find(FRAME_END)
        if end < 0:
            if len(buf) > self.max_bytes:
                self._head = bytes(buf[:_HEAD_KEPT])
                self._skipping = True
                self._in_frame = False
                keep = 1 if buf.endswith(END_BLOCK) else 0  # its end block, whose CR comes in the next read
                del buf[: len(buf) - keep]
            return None
        payload = bytes(buf[:end])
        del buf[: end + 2]
        self._in_frame = False
        if len(payload) > self.max_bytes:
            return payload[:_HEAD_KEPT], True
        return payload, False


class MllpServer:
    """The MLLP connector: ``start()`` listens (``port`` is then the bound port), ``stop()`` closes."""

    name = "mllp"

    def __init__(self, receiver: Receiver, *, host: str, port: int, max_message_bytes: int = 2 * 1024 * 1024,
                 idle_timeout_s: float = 300.0, max_connections: int = 200, metrics: Metrics | None = None,
                 workers: int = 32, ssl_context: ssl.SSLContext | None = None,
                 identify: Callable[[dict[str, Any] | None], str] | None = None,
                 handshake_timeout_s: float = 10.0) -> None:
        self.receiver = receiver
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
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
        if len(self._connections) >= self.max_connections:
            log.warning("MLLP connection refused: limit of %d reached peer=%s", self.max_connections, peer)
            self.metrics.inc("pivot_mllp_connections_refused_total", help_text="connections over the limit")
            writer.close()
            return
        self._connections.add(task)
        self.metrics.inc("pivot_mllp_connections_total", help_text="MLLP connections accepted")
        try:
            await self._connection(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("MLLP connection lost peer=%s", peer)
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        parser = FrameParser(self.max_message_bytes)
        identity = ""
        if self.ssl_context is not None:
            cert = writer.get_extra_info("peercert")
            identity = self.identify(cert if isinstance(cert, dict) and cert else None)
        origin = Origin(TRANSPORT, peer, identity=identity)
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), self.idle_timeout_s)
            except TimeoutError:
                log.info("MLLP idle timeout peer=%s after %.0fs", peer, self.idle_timeout_s)
                return
            if not data:
                return
            noise_before = parser.noise
            for payload, oversize in parser.feed(data):
                if oversize:
                    error = ParseError(f"message larger than the {self.max_message_bytes}-byte limit",
                                       hl7_code="207")
                    reply: Reply = await loop.run_in_executor(self._pool, self.receiver.refuse, payload,
                                                              error, origin)
                else:
                    reply = await loop.run_in_executor(self._pool, self.receiver.receive, payload, origin)
                for ack in reply.acks:
                    writer.write(frame(ack))
                try:  # a client that stops reading its ACKs must not hold its slot for ever
                    await asyncio.wait_for(writer.drain(), self.idle_timeout_s)
                except TimeoutError:
                    log.info("MLLP client not reading its ACKs peer=%s after %.0fs: closed", peer,
                             self.idle_timeout_s)
                    writer.transport.abort()
                    return
            if parser.noise > noise_before:
                self.metrics.inc("pivot_mllp_noise_bytes_total", parser.noise - noise_before,
                                 help_text="bytes outside MLLP frames, dropped")


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

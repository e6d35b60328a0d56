"""MLLP connections that never finish a frame cannot lock real senders out (issue 13, finding 6).

Real sockets against the real listener (MllpServer), with small timeouts: the frame deadline
(trickling bytes do not extend it), idle time between frames (stray bytes do not extend it), the
per-address cap, and admission at the limit (a clean sender gets a trickler's slot; proven
connections keep theirs). Clients bind other loopback addresses (127.0.0.2…) to be other peers.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from connectors.mllp import MllpServer, frame
from gateway.errors import IncompleteFrameError
from gateway.hl7v2 import parse
from gateway.samples import er_message
from tests.e2e_helpers import FrameReader, wait_for
from tests.test_connectors_contract import RecordingReceiver

Factory = Callable[..., tuple[MllpServer, RecordingReceiver]]


@pytest.fixture
def serve() -> Iterator[Factory]:
    """Start MllpServers (on a RecordingReceiver) with the given settings; all stopped at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[MllpServer] = []

    def make(**kwargs: object) -> tuple[MllpServer, RecordingReceiver]:
        receiver = RecordingReceiver()
        srv = MllpServer(receiver, host="127.0.0.1", port=0, **kwargs)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(srv.start(), loop).result(10)
        servers.append(srv)
        return srv, receiver

    yield make
    for srv in servers:
        asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _msa(ack: bytes) -> tuple[str, str]:
    msa = parse(ack).first("MSA")
    assert msa is not None
    return msa.get(1), msa.get(2)


def _closed(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the server closes ``sock`` (None: still open after ``timeout_s``)."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        data = sock.recv(100)
    except TimeoutError:
        return None
    except ConnectionError:
        data = b""
    assert data == b""
    return time.monotonic() - started


def _exchange(sock: socket.socket, i: int) -> tuple[str, str]:
    sock.sendall(frame(er_message(i)))
    return _msa(FrameReader(sock).frame(timeout_s=5))


def _trickle(sock: socket.socket, stop: threading.Event, every_s: float = 0.2) -> threading.Thread:
    """Start a frame and send one more byte of it every ``every_s``, never ending it."""
    sock.sendall(b"\x0b" + er_message(0)[:40])

    def run() -> None:
        while not stop.wait(every_s):
            try:
                sock.sendall(b"X")
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_trickling_connection_is_closed_at_the_frame_deadline(serve: Factory) -> None:
    srv, receiver = serve(idle_timeout_s=1.0, frame_timeout_s=1.5)
    stop = threading.Event()
    with _connect(srv.port) as sock:
        try:
            _trickle(sock, stop)  # a byte every 0.2 s: the idle timer alone would never fire
            closed_after = _closed(sock, 6.0)
        finally:
            stop.set()
    assert closed_after is not None, "the trickling connection was never closed"
    assert 1.0 < closed_after < 4.5  # at the 1.5 s deadline (slack for a loaded machine)
    assert srv.metrics.total("pivot_mllp_frame_timeouts_total") == 1
    assert receiver.calls == []


def test_stray_bytes_between_frames_do_not_extend_the_idle_timeout(serve: Factory) -> None:
    srv, _ = serve(idle_timeout_s=1.0, frame_timeout_s=30.0)
    stop = threading.Event()
    with _connect(srv.port) as sock:
        assert _exchange(sock, 1)[0] == "AA"

        def noise() -> None:
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"\r\n")
                except OSError:
                    return

        threading.Thread(target=noise, daemon=True).start()
        try:
            closed_after = _closed(sock, 6.0)
        finally:
            stop.set()
    assert closed_after is not None
    assert closed_after < 4.0  # 1 s after the last frame, however much noise


def test_a_silent_connection_inside_a_frame_is_closed_by_the_idle_timeout(serve: Factory) -> None:
    srv, _ = serve(idle_timeout_s=1.0, frame_timeout_s=30.0)
    with _connect(srv.port) as sock:
        sock.sendall(b"\x0b" + er_message(0)[:100])
        closed_after = _closed(sock, 6.0)
    assert closed_after is not None
    assert 0.5 < closed_after < 4.0


def test_connections_per_address_are_capped(serve: Factory) -> None:
    srv, _ = serve(idle_timeout_s=10.0, max_connections=10, max_connections_per_peer=2)
    with ExitStack() as stack:
        held = [stack.enter_context(_connect(srv.port, "127.0.0.2")) for _ in range(2)]
        for n, sock in enumerate(held):
            assert _exchange(sock, n)[0] == "AA"
        over = stack.enter_context(_connect(srv.port, "127.0.0.2"))
        closed_after = _closed(over, 3.0)
        assert closed_after is not None
        assert closed_after < 1.0  # closed at once
        other = stack.enter_context(_connect(srv.port, "127.0.0.3"))  # another address still gets in
        assert _exchange(other, 3)[0] == "AA"
        assert _exchange(held[0], 4)[0] == "AA"
        # a sender reconnecting while its old connection (nothing accepted on it) still holds the
        # address's last slot: the new connection takes it
        stale = stack.enter_context(_connect(srv.port, "127.0.0.3"))
        wait_for(lambda: srv.active_connections == 4, timeout_s=5)
        fresh = stack.enter_context(_connect(srv.port, "127.0.0.3"))
        assert _exchange(fresh, 5)[0] == "AA"
        assert _closed(stale, 3.0) is not None
        assert _exchange(other, 6)[0] == "AA"  # the proven one kept its slot
    assert srv.metrics.value("pivot_mllp_connections_refused_total", reason="peer_limit") == 1


def test_at_the_limit_a_clean_sender_gets_a_tricklers_slot(serve: Factory) -> None:
    srv, _ = serve(idle_timeout_s=30.0, frame_timeout_s=30.0, max_connections=3, max_connections_per_peer=3)
    stop = threading.Event()
    with ExitStack() as stack:
        stack.callback(stop.set)
        tricklers = [stack.enter_context(_connect(srv.port, "127.0.0.2")) for _ in range(3)]
        for sock in tricklers:
            _trickle(sock, stop)
        wait_for(lambda: srv.active_connections == 3, timeout_s=5)
        # all three slots held by connections that never finish a frame; a real sender comes
        clean = stack.enter_context(_connect(srv.port))
        assert _exchange(clean, 1) == ("AA", parse(er_message(1)).control_id)
        assert _closed(tricklers[0], 3.0) is not None  # the oldest trickler gave its slot up
        # more newcomers from the tricklers' address take the tricklers' slots, never the proven one
        for _ in range(3):
            late = stack.enter_context(_connect(srv.port, "127.0.0.2"))
            _trickle(late, stop)
            time.sleep(0.1)
        assert _exchange(clean, 2)[0] == "AA"
    assert srv.metrics.total("pivot_mllp_connections_evicted_total") >= 3


def test_unknown_addresses_cannot_take_a_known_senders_slot(serve: Factory) -> None:
    srv, _ = serve(idle_timeout_s=30.0, max_connections=2, max_connections_per_peer=2)
    with ExitStack() as stack:
        first = stack.enter_context(_connect(srv.port))
        assert _exchange(first, 1)[0] == "AA"  # 127.0.0.1 is now a known sender
        first.close()
        wait_for(lambda: srv.active_connections == 0, timeout_s=5)
        known = stack.enter_context(_connect(srv.port))  # connected, not sent anything yet
        proven = stack.enter_context(_connect(srv.port, "127.0.0.3"))
        assert _exchange(proven, 2)[0] == "AA"
        wait_for(lambda: srv.active_connections == 2, timeout_s=5)
        stranger = stack.enter_context(_connect(srv.port, "127.0.0.2"))
        assert _closed(stranger, 3.0) is not None  # full: no slot it may take
        assert _exchange(known, 3)[0] == "AA"  # the known sender's unproven slot was kept
    assert srv.metrics.value("pivot_mllp_connections_refused_total", reason="limit") == 1


def test_a_partial_frame_cut_by_a_new_start_block_goes_to_refuse(serve: Factory) -> None:
    srv, receiver = serve(idle_timeout_s=5.0)
    partial = er_message(1)[:300]
    with _connect(srv.port) as sock:
        sock.sendall(b"\x0b" + partial + frame(er_message(2)))
        reader = FrameReader(sock)
        first, second = reader.frame(timeout_s=5), reader.frame(timeout_s=5)
    assert _msa(first) == ("AR", parse(er_message(1)).control_id)
    assert _msa(second) == ("AA", parse(er_message(2)).control_id)
    head, error, _origin = receiver.refusals[0]
    assert head == partial
    assert isinstance(error, IncompleteFrameError)

"""The MLLP listener: framing quirks of real feeds, limits and isolation between connections."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mllp import FrameParser, FrameStatus, MllpServer, frame
from gateway.hl7v2 import parse
from gateway.samples import er_message
from tests.e2e_helpers import FrameReader
from tests.test_connectors_contract import RecordingReceiver

MSGS = [er_message(i) for i in range(5)]


def _frames(parser: FrameParser, chunks: list[bytes]) -> list[tuple[bytes, bool]]:
    out: list[tuple[bytes, bool]] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=40))
def test_any_split_of_the_stream_gives_the_same_frames(cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in MSGS)
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(stream[pos : pos + size])
        pos += size
    chunks.append(stream[pos:])
    assert _frames(FrameParser(1 << 20), chunks) == [(m, False) for m in MSGS]


def test_noise_between_frames_and_a_flood_of_start_bytes() -> None:
    parser = FrameParser(1 << 20)
    stream = b"\r\n junk" + frame(MSGS[0]) + b"\x00\xffxx" + b"\x0b" * 5000 + MSGS[1] + b"\x1c\x0d"
    assert _frames(parser, [stream]) == [(MSGS[0], False), (MSGS[1], False)]
    assert parser.noise == len(b"\r\n junk") + 4 + 4999


def test_a_half_frame_cut_by_a_new_start_block_is_passed_on_as_incomplete() -> None:
    stream = b"\x0bMSH|^~\\&|half" + frame(MSGS[2])
    assert _frames(FrameParser(1 << 20), [stream]) == [(b"MSH|^~\\&|half", FrameStatus.INCOMPLETE),
                                                       (MSGS[2], FrameStatus.COMPLETE)]
    blank = b"\x0b\r\n" + frame(MSGS[1])  # nothing but blanks before the new start block: noise
    assert _frames(FrameParser(1 << 20), [blank]) == [(MSGS[1], FrameStatus.COMPLETE)]


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=700))
def test_a_cut_frame_is_found_in_any_split_and_inside_an_oversize_frame(chunk: int) -> None:
    half = MSGS[0][:300]
    stream = b"\x0b" + half + frame(MSGS[1]) + b"\x0b" + MSGS[2] + b"X" * 5000 + frame(MSGS[3])
    got = _frames(FrameParser(4000), [stream[i : i + chunk] for i in range(0, len(stream), chunk)])
    assert [status for _, status in got] == [FrameStatus.INCOMPLETE, FrameStatus.COMPLETE,
                                             FrameStatus.INCOMPLETE, FrameStatus.COMPLETE]
    assert (got[0][0], got[1][0], got[3][0]) == (half, MSGS[1], MSGS[3])
    assert len(got[2][0]) > 4000  # the head of the oversize frame the restart cut short
    assert (MSGS[2] + b"X" * 5000).startswith(got[2][0])


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=5000))
def test_oversize_frame_keeps_its_head_and_the_next_frame_is_intact(chunk: int) -> None:
    big = MSGS[0] + b"X" * 300_000
    stream = frame(big) + frame(MSGS[1])
    chunks = [stream[i : i + chunk * 37] for i in range(0, len(stream), chunk * 37)]
    got = _frames(FrameParser(100_000), chunks)
    assert len(got) == 2
    assert got[0][1] is FrameStatus.OVERSIZE
    assert big.startswith(got[0][0])
    assert len(got[0][0]) < len(big)
    assert got[1] == (MSGS[1], False)


@pytest.fixture
def server() -> Iterator[tuple[MllpServer, RecordingReceiver]]:
    receiver = RecordingReceiver()
    loop = asyncio.new_event_loop()
    srv = MllpServer(receiver, host="127.0.0.1", port=0, max_message_bytes=200_000, idle_timeout_s=1.0,
                     max_connections=3)
    loop.run_until_complete(srv.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield srv, receiver
    asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _msa(ack: bytes) -> tuple[str, str]:
    msa = parse(ack).first("MSA")
    assert msa is not None
    return msa.get(1), msa.get(2)


def test_split_and_coalesced_frames_over_tcp(server: tuple[MllpServer, RecordingReceiver]) -> None:
    srv, receiver = server
    stream = b"".join(frame(m) for m in MSGS)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(stream), 333):
            sock.sendall(stream[i : i + 333])
            time.sleep(0.001)
        reader = FrameReader(sock)
        acks = [reader.frame() for _ in MSGS]
    assert [_msa(a) for a in acks] == [("AA", parse(m).control_id) for m in MSGS]
    assert [raw for raw, _ in receiver.calls] == MSGS


def test_oversize_gets_ar_with_control_id_and_the_connection_goes_on(
        server: tuple[MllpServer, RecordingReceiver]) -> None:
    srv, receiver = server
    big = MSGS[0].replace(b"ZPV|1|CIV|", b"ZPV|1|CIV|" + b"X" * 400_000)
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(frame(big) + frame(MSGS[1]))
        reader = FrameReader(sock)
        first, second = reader.frame(), reader.frame()
    assert _msa(first) == ("AR", parse(MSGS[0]).control_id)
    assert _msa(second) == ("AA", parse(MSGS[1]).control_id)
    head, error, _origin = receiver.refusals[0]
    assert big.startswith(head)
    assert "limit" in error.message


def test_idle_connection_is_closed(server: tuple[MllpServer, RecordingReceiver]) -> None:
    srv, _ = server
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server
        assert 0.5 < time.monotonic() - started < 4


def test_connection_limit_and_a_silent_client_does_not_block_others(
        server: tuple[MllpServer, RecordingReceiver]) -> None:
    srv, _ = server
    silent = socket.create_connection(("127.0.0.1", srv.port))
    half = socket.create_connection(("127.0.0.1", srv.port))
    half.sendall(b"\x0b" + MSGS[0][:100])  # a frame that never ends
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(frame(MSGS[3]))
            assert _msa(FrameReader(sock).frame(timeout_s=3)) == ("AA", parse(MSGS[3]).control_id)
            # the 4th, over the limit: the oldest connection that never had a message accepted
            # (the silent one) gives its slot up; the proven one keeps it
            with socket.create_connection(("127.0.0.1", srv.port)) as extra:
                extra.sendall(frame(MSGS[4]))
                assert _msa(FrameReader(extra).frame(timeout_s=3)) == ("AA", parse(MSGS[4]).control_id)
                silent.settimeout(3)
                assert silent.recv(10) == b""
                sock.sendall(frame(MSGS[1]))
                assert _msa(FrameReader(sock).frame(timeout_s=3))[0] == "AA"
    finally:
        silent.close()
        half.close()

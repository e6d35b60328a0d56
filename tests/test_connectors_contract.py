"""One contract, every connector: MLLP, HTTP, files and the raw Kafka input.

Each connector is driven through its real transport (a TCP socket, an HTTP request, a file on
disk, a Kafka topic on tansu) against a recording fake Receiver at the intake seam. The contract:
every message reaches the receiver exactly once, byte for byte, in order, with the connector's
transport in its Origin; where the transport has a way back, the sender gets exactly the ACKs the
receiver returned, in order; a refused message never stops the connector.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from connectors.base import Origin, Reply
from connectors.files import FileConnector
from connectors.http import HttpConnector
from connectors.kafka_raw import KafkaRawConnector
from connectors.mllp import MllpServer, frame
from gateway.errors import GatewayError
from gateway.eventlog.base import OutRecord
from gateway.eventlog.kafka import KafkaLog
from gateway.hl7v2 import parse
from gateway.hl7v2.ack import build_ack
from gateway.samples import er_message
from tests.e2e_helpers import FrameReader


class RecordingReceiver:
    """Answers AA (or the code ``plan`` gives a control id) with a real ACK; records every call."""

    def __init__(self, plan: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[bytes, Origin]] = []
        self.refusals: list[tuple[bytes, GatewayError, Origin]] = []
        self.plan = plan or {}
        self._lock = threading.Lock()

    def receive(self, raw: bytes, origin: Origin) -> Reply:
        with self._lock:
            self.calls.append((raw, origin))
        msg = parse(raw)
        code = self.plan.get(msg.control_id, "AA")
        error = GatewayError("planned refusal") if code != "AA" else None
        return Reply(code=code, acks=[build_ack(code, msg=msg, error=error)], control_id=msg.control_id)

    def refuse(self, head: bytes, error: GatewayError, origin: Origin) -> Reply:
        with self._lock:
            self.refusals.append((head, error, origin))
        return Reply(code="AR", acks=[build_ack("AR", msg=None, raw=head, error=error)])


@dataclass
class Driver:
    """Sends messages through one connector's transport; returns the ACKs it got back (if any)."""

    transport: str
    send: Callable[[list[bytes]], list[bytes]]
    has_acks: bool


def _mllp_driver(receiver: RecordingReceiver) -> Iterator[Driver]:
    loop = asyncio.new_event_loop()
    server = MllpServer(receiver, host="127.0.0.1", port=0)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def send(msgs: list[bytes]) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"".join(frame(m) for m in msgs))
            reader = FrameReader(sock)
            return [reader.frame() for _ in msgs]

    yield Driver("mllp", send, True)
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _http_driver(receiver: RecordingReceiver) -> Iterator[Driver]:
    app = FastAPI()
    app.include_router(HttpConnector(lambda: receiver).router)
    client = TestClient(app)

    def send(msgs: list[bytes]) -> list[bytes]:
        out = []
        for m in msgs:
            resp = client.post("/hl7v2", content=m, headers={"Content-Type": "x-application/hl7-v2+er7"})
            assert resp.status_code == 200
            out.append(resp.content)
        return out

    yield Driver("http", send, True)
    client.close()


def _file_driver(receiver: RecordingReceiver, tmp: Path) -> Iterator[Driver]:
    def send(msgs: list[bytes]) -> list[bytes]:
        path = tmp / f"feed-{time.monotonic_ns()}.hl7"
        path.write_bytes(b"".join(m if m.endswith(b"\r") else m + b"\r" for m in msgs))
        conn = FileConnector([path], receiver)
        asyncio.run(conn.start())
        asyncio.run(conn.stop())
        assert conn.summary.total == len(msgs)
        return []

    yield Driver("file", send, False)


def _kafka_driver(receiver: RecordingReceiver, bootstrap: str, prefix: str) -> Iterator[Driver]:
    topic = f"{prefix}site.raw"

    def send(msgs: list[bytes]) -> list[bytes]:
        log = KafkaLog(bootstrap, client_id="site")
        try:  # one key: one partition, so the order is defined
            log.append_many([OutRecord(topic, m, key=b"site") for m in msgs])
        finally:
            log.close()
        conn = KafkaRawConnector(bootstrap=bootstrap, topic=topic, group=f"{prefix}g", receiver=receiver,
                                 session_timeout_ms=6000, heartbeat_interval_ms=1000, poll_timeout_s=0.2)
        before = len(receiver.calls)
        asyncio.run(conn.start())
        deadline = time.monotonic() + 40
        while len(receiver.calls) - before < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        asyncio.run(conn.stop())
        return []

    yield Driver("kafka", send, False)


@pytest.fixture(params=["mllp", "http", "file", pytest.param("kafka", marks=pytest.mark.kafka)])
def driven(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Driver, RecordingReceiver]]:
    receiver = RecordingReceiver({"HLA00000003": "AE"})
    if request.param == "mllp":
        gen = _mllp_driver(receiver)
    elif request.param == "http":
        gen = _http_driver(receiver)
    elif request.param == "file":
        gen = _file_driver(receiver, tmp_path)
    else:
        bootstrap = request.getfixturevalue("kafka_broker")
        gen = _kafka_driver(receiver, bootstrap, request.getfixturevalue("topic_prefix"))
    driver = next(gen)
    yield driver, receiver
    for _ in gen:
        pass


def test_every_message_reaches_the_receiver_once_in_order(driven: tuple[Driver, RecordingReceiver]) -> None:
    driver, receiver = driven
    msgs = [er_message(i, charset="8859/1" if i % 2 else "UNICODE UTF-8") for i in range(8)]
    acks = driver.send(msgs)
    assert [raw.rstrip(b"\r") for raw, _ in receiver.calls] == [m.rstrip(b"\r") for m in msgs]
    assert {origin.transport for _, origin in receiver.calls} == {driver.transport}
    if driver.has_acks:
        assert [parse(a).first("MSA").get(2) for a in acks] == [parse(m).control_id for m in msgs]  # type: ignore[union-attr]
        codes = [parse(a).first("MSA").get(1) for a in acks]  # type: ignore[union-attr]
        assert codes == ["AA", "AA", "AA", "AE", "AA", "AA", "AA", "AA"]  # a refusal does not stop it
    else:
        assert acks == []


def test_a_second_batch_after_a_refusal_is_still_served(driven: tuple[Driver, RecordingReceiver]) -> None:
    driver, receiver = driven
    driver.send([er_message(3)])  # planned AE
    driver.send([er_message(20), er_message(21)])
    ids = [parse(raw).control_id for raw, _ in receiver.calls]
    assert ids == [parse(er_message(i)).control_id for i in (3, 20, 21)]

"""SIGKILL the gateway while a client streams 2,000 messages: after a restart every message that
got an AA is in the FHIR store exactly once (one Encounter, one version)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from gateway.hl7v2 import parse
from gateway.samples import er_message
from tests.e2e_helpers import FrameReader, ack_field, entries, search, visit_counts, wait_for

TOTAL = 2_000


def _stream(port: int, msgs: list[bytes], acked: list[str], stop: threading.Event) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            reader = FrameReader(sock)
            for raw in msgs:
                sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
                ack = reader.frame(timeout_s=5)
                if ack_field(ack, "MSA", 1) == "AA":
                    acked.append(ack_field(ack, "MSA", 2))
    except OSError:
        stop.set()


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(serve_factory: Any) -> None:
    gw = serve_factory(env={"PIVOT_LOG_LEVEL": "WARNING"}).start()
    msgs = [er_message(i) for i in range(TOTAL)]
    visits = {parse(m).control_id: parse(m).first("PV1").get(19) for m in msgs}  # type: ignore[union-attr]
    acked: list[str] = []
    stop = threading.Event()
    client = threading.Thread(target=_stream, args=(gw.mllp_port, msgs, acked, stop))
    client.start()
    wait_for(lambda: len(acked) >= 400, timeout_s=120, interval_s=0.01)
    gw.kill()
    client.join(30)
    assert stop.is_set(), "the client should have seen the connection drop"
    assert 400 <= len(acked) < TOTAL
    gw.start()
    last = acked[-1]
    wait_for(lambda: entries(search(gw.base, "Encounter", identifier=visits[last])), timeout_s=120)
    time.sleep(1.0)
    counts = visit_counts(f"{gw.base}/fhir")  # one pass over every Encounter, not two searches per message
    assert [cid for cid in acked if counts.get(visits[cid]) != 1] == []  # every AA'd message: one Encounter
    stored = int(search(gw.base, "Encounter", _summary="count")["total"])
    assert stored >= len(acked)
    assert int(search(gw.base, "Encounter/_history", _count="0")["total"]) == stored  # one version each

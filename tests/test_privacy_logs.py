"""No health data in logs: canary names, NAM, birth dates and addresses never appear in any log line
or error output of a gateway that processed them (good and bad messages alike)."""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

import httpx

from gateway import samples
from gateway.samples import er_message
from tests.e2e_helpers import FrameReader, entries, search, wait_for

# the canary people of gateway/samples.py (PIVOT_SAMPLES_CANARY): tests/test_privacy_canary_suite.py
# looks for the same fragments after running the end-to-end suite, this module included, on them
CANARY_FAMILY = samples.CANARY_FAMILY[0]  # Canarijaune
CANARY_GIVEN = samples.CANARY_GIVEN[1][0]  # Zéphirine, F
CANARY_NAM = samples.nam(CANARY_FAMILY, CANARY_GIVEN, datetime(samples.CANARY_BIRTH_YEAR, 6, 16), "F", 99)
CANARY_DOB = f"{samples.CANARY_BIRTH_YEAR}0616"
CANARY_STREET = f"987 {samples.CANARY_STREET}"


def _canary(i: int, *, break_date: bool = False, drop_pid: bool = False) -> bytes:
    text = er_message(i).decode()
    lines = text.split("\r")
    for n, line in enumerate(lines):
        if line.startswith("PID"):
            f = line.split("|")
            f[3] = f"CAN{i}^^^HSA^MR~{CANARY_NAM}^^^RAMQ^JHN"
            f[5] = f"{CANARY_FAMILY}^{CANARY_GIVEN}"
            f[7] = f"{samples.CANARY_BIRTH_YEAR}1399" if break_date else CANARY_DOB
            f[11] = f"{CANARY_STREET}^^Saint-Sauveur^QC^J0R 1R0^CA^H"
            lines[n] = "|".join(f)
    if drop_pid:
        lines = [ln for ln in lines if not ln.startswith("PID")]
    return "\r".join(lines).encode()


def test_canary_data_never_reaches_the_logs(serve_factory: Any) -> None:
    gw = serve_factory(env={"PIVOT_LOG_LEVEL": "DEBUG"}).start()
    msgs = [_canary(900), _canary(901, break_date=True), _canary(902, drop_pid=True), _canary(900)]
    with socket.create_connection(("127.0.0.1", gw.mllp_port)) as sock:
        reader = FrameReader(sock)
        for raw in msgs:
            sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
            reader.frame()
    httpx.post(f"{gw.base}/hl7v2", content=_canary(903, break_date=True), headers={"Content-Type": "text/plain"})
    wait_for(lambda: entries(search(gw.base, "Patient", identifier=CANARY_NAM)))
    httpx.get(f"{gw.base}/fhir/Patient", params={"identifier": "nothing|" + CANARY_NAM})
    gw.stop()
    logs = gw.logs()
    assert "Pivot listening" in logs or "listening" in logs.lower()
    for canary in (CANARY_FAMILY, CANARY_GIVEN, CANARY_NAM, CANARY_DOB, f"{samples.CANARY_BIRTH_YEAR}1399",
                   CANARY_STREET, "Canari"):
        assert canary not in logs, f"{canary!r} leaked into the logs"

"""``pivot serve`` as a real process for the benchmarks (embedded defaults, free loopback ports)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(data: Path, http: int, mllp: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the gateway and return once its HTTP API and MLLP listener both answer."""
    full = {**os.environ, "PIVOT_DATA_DIR": str(data), "PIVOT_HTTP_PORT": str(http), "PIVOT_MLLP_PORT": str(mllp),
            "PIVOT_LOG_LEVEL": "WARNING", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=full)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pivot serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                socket.create_connection(("127.0.0.1", mllp), timeout=1).close()
                return proc
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("pivot serve did not start")


def rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and its children (kB, from /proc; 0 when unreadable)."""
    total = 0
    tasks = Path(f"/proc/{pid}/task")
    pids = [pid]
    if tasks.is_dir():
        for task in tasks.iterdir():
            children = task / "children"
            if children.exists():
                pids.extend(int(x) for x in children.read_text().split())
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def read_ack(sock: socket.socket, buf: bytearray) -> bytes:
    """The next MLLP frame's content from ``sock`` (``buf``: bytes already read, kept across calls)."""
    while b"\x1c\x0d" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf.extend(chunk)
    end = buf.index(b"\x1c\x0d")
    frame = bytes(buf[1:end])
    del buf[: end + 2]
    return frame

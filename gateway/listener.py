"""The MLLP listener in a process of its own (embedded mode, ``PIVOT_MLLP_PROCESS=true``).

Why: an ACK waits for parse, map, identity and the durable append — about 2 ms of work. In one
interpreter it also waits for whatever the mapping, rules and store workers are doing while they
hold the GIL, and for their garbage collections: at 200 msg/s that made AA p99 ~110 ms. In its own
process the listener only shares the machine, not the interpreter, with them.

    pivot serve (parent)                          python -m gateway.listener (child)
      HTTP: /hl7v2, /fhir, console, metrics          MLLP listener → Intake (parse, map, identity,
      workers: mapping, rules, store, delivery         dedupe, append to hl7v2.in) → ACK
      subscriptions                                  ─ the result → the handoff (eventlog/state/handoff.py)
      ◄── one byte per commit (pipe): wake the consumers    ─ its metrics → listener-metrics.json

Both processes share the data dir's SQLite files (event log, dedupe, identity index, handoff),
each with its own connections; SQLite serialises their writes. With ``PIVOT_STATE_URL`` the
dedupe, identity and handoff tables are in PostgreSQL instead (gateway.eventlog.state). The
child dies with the parent (``PR_SET_PDEATHSIG``, and a check of its parent id), so a SIGKILLed
gateway leaves no listener behind holding the port; the parent restarts a child that dies on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.settings import Settings

if TYPE_CHECKING:
    from connectors.base import Receiver
    from connectors.mllp import MllpServer
    from gateway.metrics import Metrics
    from gateway.security import Security

log = logging.getLogger("pivot.listener")
METRICS_FILE = "listener-metrics.json"
_READY_TIMEOUT_S = 60.0
_METRICS_EVERY_S = 1.0
_PR_SET_PDEATHSIG = 1


# -- parent side -----------------------------------------------------------------------------------
class ListenerProcess:
    """Connector of the parent: starts, supervises and stops the listener child (see module doc)."""

    name = "mllp"

    def __init__(self, settings: Settings, follow: Callable[[int], None]) -> None:
        self.settings = settings
        self.port = settings.mllp_port
        self._follow = follow  # EmbeddedLog.follow: wake the parent's consumers from the child's commits
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        """Start the child from the event loop's (main) thread — its parent-death signal is tied to
        the thread that forks it — and wait, off the loop, for it to report ready."""
        status_r, status_w = os.pipe()
        notify_r, notify_w = os.pipe()
        os.set_blocking(notify_w, False)
        args = [sys.executable, "-m", "gateway.listener", "--status-fd", str(status_w),
                "--notify-fd", str(notify_w), "--parent", str(os.getpid())]
        try:
            self._proc = subprocess.Popen(args, pass_fds=(status_w, notify_w), env={
                **os.environ, "PIVOT_MLLP_PORT": str(self.port)})
        finally:
            os.close(status_w)
            os.close(notify_w)
        self._follow(notify_r)
        try:
            line = await asyncio.get_running_loop().run_in_executor(None, _read_line, status_r, _READY_TIMEOUT_S)
        finally:
            os.close(status_r)
        if line.startswith("ready "):
            self.port = int(line.split()[1])
            return
        self._kill()
        raise ConfigError(line.removeprefix("error ").strip() or "the MLLP listener process did not start")

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            proc = self._proc
            if proc is None:
                return
            code = await loop.run_in_executor(None, proc.wait)
            if self._stopping:
                return
            self.restarts += 1
            log.error("MLLP listener process exited (code %s); restarting it", code)
            await asyncio.sleep(min(5.0, 0.5 * self.restarts))
            try:
                await self._spawn()
            except ConfigError as exc:
                log.error("MLLP listener process could not restart: %s", exc.message)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


def read_metrics(data_dir: Path) -> list[dict[str, Any]]:
    """The listener child's last metrics snapshot ([] when there is none)."""
    try:
        return [json.loads((data_dir / METRICS_FILE).read_text())]
    except (OSError, ValueError):
        return []


def _read_line(fd: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "error the MLLP listener process did not report ready in time"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


def tune_gc() -> None:
    """Keep full garbage collections off the ACK path.

    A full (generation 2) collection walks every object in the process: with fhir.resources'
    models loaded that took 70–145 ms here, during which no ACK can be sent — the whole p99 tail at
    200 msg/s. Everything built at start-up (modules, models, code maps) is moved out of the
    collector's reach (``gc.freeze``), and young collections run less often (most of what a
    message allocates dies young anyway and is freed by reference counting).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def mllp_server(receiver: Receiver, settings: Settings, metrics: Metrics, security: Security) -> MllpServer:
    """The MLLP listener (connectors.mllp.MllpServer) of these settings, in either process."""
    from connectors.mllp import MllpServer

    return MllpServer(receiver, host=settings.host, port=settings.mllp_port,
                      max_message_bytes=settings.mllp_max_message_bytes, idle_timeout_s=settings.mllp_idle_timeout_s,
                      frame_timeout_s=settings.mllp_frame_timeout_s, max_connections=settings.mllp_max_connections,
                      max_connections_per_peer=settings.mllp_max_connections_per_peer, metrics=metrics,
                      ssl_context=security.mllp_ssl, identify=security.certificate_identity)


# -- child side ------------------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux); elsewhere the parent-id check stops it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


async def _child(settings: Settings, status_fd: int, notify_fd: int, parent: int) -> None:
    from gateway.eventlog.embedded import EmbeddedLog
    from gateway.eventlog.state.dedupe import open_dedupe
    from gateway.eventlog.state.handoff import open_handoff
    from gateway.identity import IdentityResolver
    from gateway.intake import Intake
    from gateway.metrics import Metrics
    from gateway.security import Security
    from mappings import IdentifierSystems, Profiles

    metrics = Metrics()
    event_log = EmbeddedLog(settings.data_dir / "log.sqlite", notify_fd=notify_fd)
    dedupe = open_dedupe(settings.state_url, settings.data_dir)
    cache = open_handoff(settings.state_url, settings.data_dir)
    identity = IdentityResolver(settings.data_dir, settings.state_url)
    security = Security(settings, event_log=None, metrics=metrics)  # the parent publishes the audit trail
    intake = Intake(settings, event_log, dedupe, Profiles.load(settings.sender_profiles, settings.default_timezone),
                    IdentifierSystems.load(settings.identifier_systems), metrics, cache, identity,
                    authorize=security.authorize_sender)
    intake.pipeline.warm()
    server = mllp_server(intake, settings, metrics, security)
    try:
        await server.start()
    except OSError as exc:
        os.write(status_fd, f"error cannot listen on PIVOT_MLLP_PORT={settings.mllp_port}: {exc.strerror}\n"
                 .encode())
        raise SystemExit(2) from None
    tune_gc()
    os.write(status_fd, f"ready {server.port}\n".encode())
    os.close(status_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    target = settings.data_dir / METRICS_FILE
    while not stop.is_set():
        _write_metrics(target, metrics)
        if os.getppid() != parent:
            log.error("gateway process gone: MLLP listener stopping")
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _METRICS_EVERY_S)
    await server.stop()
    _write_metrics(target, metrics)
    security.close()
    identity.close()
    cache.close()
    event_log.close()
    dedupe.close()


def _write_metrics(target: Path, metrics: Any) -> None:
    tmp = target.with_suffix(".tmp")
    old = os.umask(0o077)
    try:
        tmp.write_text(json.dumps(metrics.snapshot()))
        os.replace(tmp, target)
    except OSError:
        log.warning("listener metrics not written")
    finally:
        os.umask(old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.listener", description=__doc__)
    ap.add_argument("--status-fd", type=int, required=True)
    ap.add_argument("--notify-fd", type=int, required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    from gateway.cli import setup_logging
    from gateway.settings import load_settings

    settings = load_settings()
    setup_logging(settings.log_level)
    asyncio.run(_child(settings, args.status_fd, args.notify_fd, args.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

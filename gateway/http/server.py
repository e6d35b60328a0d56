"""The HTTP server of the gateway: uvicorn, with a deadline for receiving each request.

uvicorn times out only the wait *between* requests (keep-alive); a client that sends half a
request — half its headers, or headers and part of a body — and goes silent holds a connection, a
file descriptor and a task for ever (encode/uvicorn#157), so enough of them exhaust the process.
``request_deadline_protocol`` closes a connection whose request is not complete
``PIVOT_HTTP_REQUEST_TIMEOUT_S`` after its first byte (or after the connection opened).
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import Settings


def request_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing connections whose request takes over ``timeout_s``."""

    class DeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a new request on a kept-alive connection
            super().data_received(data)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return DeadlineProtocol


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of ``pivot serve`` (tests pass ``options`` such as the host/port)."""
    base: dict[str, Any] = {"host": settings.host, "port": settings.http_port, "log_level": "warning",
                            "access_log": False, "lifespan": "off", "timeout_graceful_shutdown": 5,
                            "http": request_deadline_protocol(settings.http_request_timeout_s)}
    return uvicorn.Config(app, **{**base, **options})

"""uvicorn as `agentmill up` and `agentmill api` run it: its limits, and a header deadline.

uvicorn has no timeout for reading a request's headers (its keep-alive timeout only runs
between requests), so a client that sends half a header holds its connection open for ever;
a hundred such clients hold a hundred. The protocol here closes a connection whose request
headers have not all arrived ``header_timeout`` seconds after its first byte (or after the
connection opened), like nginx's ``client_header_timeout``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Fast
except ImportError:  # httptools is optional; uvicorn's "auto" falls back to h11 the same way
    _Fast = H11Protocol  # type: ignore[misc, assignment]

# h11 buffers a request's headers up to this size, then answers 431 (its default is the same;
# set here so the limit is ours, not a library default).
MAX_HEADER_BYTES = 16 * 1024


class HeaderDeadline(_Fast):
    """uvicorn's HTTP protocol, closing connections whose request headers arrive too slowly."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()  # the first bytes of the next request on a keep-alive connection
        super().data_received(data)
        if self._deadline is not None and not self._between_requests():
            self._disarm()  # the headers are in: the request is the app's now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        # Upgraded to a WebSocket: the transport belongs to another protocol now.
        if transport.get_protocol() is self and self._between_requests():
            transport.close()


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's ``http`` setting, with this header deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_timeout": header_timeout})


def server_config(
    app: Any,
    *,
    host: str,
    port: int,
    header_timeout: float,
    keep_alive: int,
    max_connections: int | None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
        http=http_protocol(header_timeout),
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        # Beyond this many open connections and tasks uvicorn answers 503 (None: no limit).
        limit_concurrency=max_connections,
    )

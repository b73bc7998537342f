"""An httpx transport that connects to addresses already checked, and never resolves a name.

httpcore asks its network backend to ``connect_tcp(host, port)`` and then starts TLS with the
URL's host name as SNI and for certificate verification. Swapping the backend for one that
maps that host to the checked addresses keeps both: the socket goes to the address the egress
policy approved, and TLS still verifies the certificate against the host name.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from ipaddress import ip_address

import httpcore
import httpx

from agentmill.tools.http._addresses import IPAddress

# httpcore's errors as httpx's, most specific first (what httpx's own transport does).
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, ours in _ERRORS:
            if isinstance(exc, core):
                raise ours(str(exc) or type(exc).__name__) from exc
        raise


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects ``host:port`` to the given addresses, in order; refuses any other host."""

    def __init__(self, host: str, port: int, addresses: Sequence[IPAddress]) -> None:
        self._host, self._port, self._addresses = host, port, tuple(addresses)
        self._inner = httpcore.AnyIOBackend()
        self.connected_to: list[IPAddress] = []  # for tests and logs: where sockets went

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if not self._is_pinned(host, port):
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        last: Exception | None = None
        for address in self._addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self.connected_to.append(address)
            return stream
        assert last is not None  # there is always at least one address
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's backend interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through http_request")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    def _is_pinned(self, host: str, port: int) -> bool:
        if port != self._port:
            return False
        try:
            return ip_address(host) == ip_address(self._host)
        except ValueError:
            return host.lower() == self._host


class PinnedTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over a ``PinnedBackend``: one origin, its checked addresses, nothing else."""

    def __init__(self, backend: PinnedBackend, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=backend, http1=True, http2=False
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()

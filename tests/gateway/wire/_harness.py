"""A small HTTP/1.1 server on loopback for the providers' wire-protocol fakes.

It runs in its own thread and event loop, keeps connections alive, records every request, and can
be told to misbehave for the next requests: answer an error status (with ``Retry-After``), answer
slowly, drop the connection before answering, or drop it in the middle of a stream. It is written
on asyncio streams rather than an ASGI server because an ASGI app cannot cut a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit


@dataclass
class WireRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class WireResponse:
    status: int = 200
    body: Any = None  # bytes, str, or a JSON value
    headers: dict[str, str] = field(default_factory=dict)
    # A streamed body (sent chunked), e.g. server-sent events or newline-delimited JSON.
    stream: AsyncIterator[bytes] | None = None


Handler = Callable[[WireRequest], Awaitable[WireResponse]]
ErrorBody = Callable[[int, str], Any]  # (status, message) -> the provider's error JSON


@dataclass
class Fault:
    kind: Literal["status", "drop", "slow", "drop_mid_stream"]
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    message: str = "injected failure"


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class WireServer:
    """Serves ``handler`` on a free loopback port; use as a context manager."""

    def __init__(self, handler: Handler, error_body: ErrorBody) -> None:
        self.handler = handler
        self.error_body = error_body
        self.faults: deque[Fault] = deque()
        self.requests: list[WireRequest] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.port = 0

    # ------------------------------------------------------------------ telling it to misbehave

    def fail(self, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``times`` requests with ``status`` in the provider's error shape."""
        self.faults.extend(
            Fault("status", status=status, retry_after=retry_after) for _ in range(times)
        )

    def drop(self, *, times: int = 1) -> None:
        """Close the connection without answering the next ``times`` requests."""
        self.faults.extend(Fault("drop") for _ in range(times))

    def slow(self, seconds: float, *, times: int = 1) -> None:
        """Wait ``seconds`` before answering the next ``times`` requests."""
        self.faults.extend(Fault("slow", seconds=seconds) for _ in range(times))

    def drop_mid_stream(self, *, times: int = 1) -> None:
        """Send the first chunk of the next streamed answers, then cut the connection."""
        self.faults.extend(Fault("drop_mid_stream") for _ in range(times))

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WireServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()  # readers see end of file and return
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    # ------------------------------------------------------------------ HTTP/1.1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                request = await self._read(reader)
                if request is None:
                    return
                self.requests.append(request)
                fault = self.faults.popleft() if self.faults else None
                if fault is not None and fault.kind == "drop":
                    return
                if fault is not None and fault.kind == "slow":
                    await asyncio.sleep(fault.seconds)
                if fault is not None and fault.kind == "status":
                    headers = {}
                    if fault.retry_after is not None:
                        headers["retry-after"] = f"{fault.retry_after:g}"
                    response = WireResponse(
                        status=fault.status,
                        body=self.error_body(fault.status, fault.message),
                        headers=headers,
                    )
                else:
                    try:
                        response = await self.handler(request)
                    except Exception as exc:  # a bug in a fake: answer 500, say what it was
                        response = WireResponse(
                            status=500, body=self.error_body(500, f"fake server bug: {exc!r}")
                        )
                cut = fault is not None and fault.kind == "drop_mid_stream"
                if not await self._write(writer, response, cut_stream=cut):
                    return
                if request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> WireRequest | None:
        line = await reader.readline()
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readline()
            body = b"".join(parts)
        split = urlsplit(target)
        return WireRequest(
            method=method.upper(),
            path=split.path,
            query=dict(parse_qsl(split.query)),
            headers=headers,
            body=body,
        )

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter, response: WireResponse, *, cut_stream: bool
    ) -> bool:
        """Send a response; False when the connection was cut on purpose."""
        headers = {k.lower(): v for k, v in response.headers.items()}
        head = f"HTTP/1.1 {response.status} {_reason(response.status)}\r\n"
        if response.stream is None:
            body = response.body
            if isinstance(body, str):
                data = body.encode()
            elif isinstance(body, bytes):
                data = body
            else:
                data = json.dumps(body).encode()
                headers.setdefault("content-type", "application/json")
            headers["content-length"] = str(len(data))
            writer.write(
                (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
                + data
            )
            await writer.drain()
            return True
        headers["transfer-encoding"] = "chunked"
        writer.write(
            (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
        )
        sent = 0
        async for chunk in response.stream:
            if not chunk:
                continue
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += 1
            if cut_stream and sent == 1:
                return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def sse(events: list[tuple[str | None, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events, one chunk each: ``(event name or None, data)``; data that is not a
    string is sent as JSON."""

    async def generate() -> AsyncIterator[bytes]:
        for name, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            prefix = f"event: {name}\n" if name else ""
            yield f"{prefix}data: {text}\n\n".encode()

    return generate()


def ndjson(lines: list[Any]) -> AsyncIterator[bytes]:
    """Newline-delimited JSON, one chunk per line (Ollama's streaming format)."""

    async def generate() -> AsyncIterator[bytes]:
        for line in lines:
            yield (json.dumps(line) + "\n").encode()

    return generate()

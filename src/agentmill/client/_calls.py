"""What the clients execute: descriptions of requests, with no I/O of their own.

An endpoint is a function that returns a :class:`Call` (one request, and how to shape its
answer). An operation of several requests is a generator (a *flow*) that yields calls and gets
their results back (or their :class:`ApiError` thrown in), and may also ask to :class:`Sleep` or
to :class:`UseToken`. A *feed* is a flow that also hands out items one by one (:class:`Emit`)
or from a response stream (:class:`Stream`). :class:`~agentmill.client.Client` and
:class:`~agentmill.client.AsyncClient` each run these with their own transport, so every
endpoint is written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

if TYPE_CHECKING:  # annotations only: `agentmill.client.ApiError` must not load httpx (the CLI)
    import httpx

T = TypeVar("T")

API = "/api/v1"


class ApiError(Exception):
    """The server answered with an error."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True, kw_only=True)
class Call(Generic[T]):
    """One request, and what to make of its JSON answer (``None`` for an empty one)."""

    method: str
    path: str
    shape: Callable[[Any], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None
    accept: frozenset[int] = field(default_factory=frozenset)  # non-2xx statuses that answer
    raw: bool = False  # shape the answer's bytes (a download), not its JSON

    def result(self, response: httpx.Response) -> T:
        if response.status_code not in self.accept:
            raise_for(response)
        if self.raw:
            return self.shape(response.content)
        return self.shape(response.json() if response.content else None)


@dataclass(frozen=True)
class Sleep:
    """Wait before the next call."""

    seconds: float


@dataclass(frozen=True)
class UseToken:
    """Send this bearer token from now on."""

    token: str


@dataclass(frozen=True)
class Emit(Generic[T]):
    """Hand one item to whoever iterates the feed."""

    item: T


@dataclass(frozen=True)
class Stream(Generic[T]):
    """Send the call and hand out ``parse(line)`` for each line of the answer (unless None)."""

    call: Call[Any]
    parse: Callable[[str], T | None]


Step: TypeAlias = Call[Any] | Sleep | UseToken
Flow: TypeAlias = Generator[Step, Any, T]
Feed: TypeAlias = Generator[Step | Emit[T] | Stream[T], Any, None]
Operation: TypeAlias = Call[T] | Flow[T]


def raise_for(response: httpx.Response) -> None:
    """:class:`ApiError` from an error answer (``{"error": {code, message, details}}``)."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["code"], error["message"], error.get("details"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "error", response.text[:500]) from None


def sse_data(line: str) -> dict[str, Any] | None:
    """The JSON payload of a Server-Sent Events ``data:`` line."""
    if line.startswith("data:"):
        return dict(json.loads(line[len("data:") :]))
    return None

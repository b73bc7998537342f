"""The two clients: each runs the endpoints of ``_endpoints`` with its own httpx transport."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import closing
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

from agentmill.client import _endpoints as api
from agentmill.client._calls import (
    ApiError,
    Call,
    Emit,
    Feed,
    Operation,
    Sleep,
    Step,
    Stream,
    UseToken,
    raise_for,
)

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _headers(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def _request_args(call: Call[Any]) -> dict[str, Any]:
    return {
        "params": call.params,
        "json": call.json,
        "content": call.content,
        "headers": call.headers,
    }


def _like(method: F, build: Callable[..., Any], owner: str) -> F:
    """Name, document and sign ``method`` as the endpoint it runs (``help()``, ``inspect``)."""
    method.__name__ = build.__name__
    method.__qualname__ = f"{owner}.{build.__name__}"
    method.__doc__ = build.__doc__
    signature = inspect.signature(build, eval_str=True)
    self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self, *signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    return method


def _sync(build: Callable[P, Operation[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._perform(build(*args, **kwargs))

    return _like(method, build, "Client")


def _sync_iter(build: Callable[P, Feed[T]]) -> Callable[Concatenate[Client, P], Iterator[T]]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._iterate(build(*args, **kwargs))

    return _like(method, build, "Client")


def _async(
    build: Callable[P, Operation[T]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._perform(build(*args, **kwargs))

    return _like(method, build, "AsyncClient")


def _async_iter(
    build: Callable[P, Feed[T]],
) -> Callable[Concatenate[AsyncClient, P], AsyncIterator[T]]:
    def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return self._iterate(build(*args, **kwargs))

    return _like(method, build, "AsyncClient")


class Client:
    """Synchronous client. ``api_key`` or ``token`` authenticates (or call :meth:`login`)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(api_key or token), timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _perform(self, operation: Operation[T]) -> T:
        if isinstance(operation, Call):
            return self._send(operation)
        reply: Any = None
        error: ApiError | None = None
        with closing(operation):
            while True:
                try:
                    step = operation.send(reply) if error is None else operation.throw(error)
                except StopIteration as done:
                    result: T = done.value
                    return result
                reply, error = self._step(step)

    def _iterate(self, feed: Feed[T]) -> Iterator[T]:
        reply: Any = None
        error: ApiError | None = None
        with closing(feed):
            while True:
                try:
                    step = feed.send(reply) if error is None else feed.throw(error)
                except StopIteration:
                    return
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.item
                elif isinstance(step, Stream):
                    yield from self._stream(step)
                else:
                    reply, error = self._step(step)

    def _step(self, step: Step) -> tuple[Any, ApiError | None]:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
        elif isinstance(step, UseToken):
            self._http.headers.update(_headers(step.token))
        else:
            try:
                return self._send(step), None
            except ApiError as exc:
                return None, exc
        return None, None

    def _send(self, call: Call[T]) -> T:
        return call.result(self._http.request(call.method, call.path, **_request_args(call)))

    def _stream(self, stream: Stream[T]) -> Iterator[T]:
        call = stream.call
        with self._http.stream(
            call.method, call.path, **_request_args(call), timeout=None
        ) as response:
            if not response.is_success:
                response.read()
                raise_for(response)
            for line in response.iter_lines():
                item = stream.parse(line)
                if item is not None:
                    yield item

    health = _sync(api.health)
    # accounts
    register = _sync(api.register)
    login = _sync(api.login)
    logout = _sync(api.logout)
    me = _sync(api.me)
    # workspaces and members
    create_workspace = _sync(api.create_workspace)
    workspaces = _sync(api.workspaces)
    workspace = _sync(api.workspace)
    rename_workspace = _sync(api.rename_workspace)
    delete_workspace = _sync(api.delete_workspace)
    members = _sync(api.members)
    add_member = _sync(api.add_member)
    change_member_role = _sync(api.change_member_role)
    remove_member = _sync(api.remove_member)
    # API keys
    create_api_key = _sync(api.create_api_key)
    api_keys = _sync(api.api_keys)
    revoke_api_key = _sync(api.revoke_api_key)
    # a workspace's own model providers
    create_provider = _sync(api.create_provider)
    providers = _sync(api.providers)
    provider = _sync(api.provider)
    update_provider = _sync(api.update_provider)
    delete_provider = _sync(api.delete_provider)
    # workflows
    create_workflow = _sync(api.create_workflow)
    push_workflow = _sync(api.push_workflow)
    workflows = _sync(api.workflows)
    workflow = _sync(api.workflow)
    update_workflow = _sync(api.update_workflow)
    delete_workflow = _sync(api.delete_workflow)
    versions = _sync(api.versions)
    # runs
    start_run = _sync(api.start_run)
    run = _sync(api.run)
    runs = _sync(api.runs)
    iter_runs = _sync_iter(api.iter_runs)
    steps = _sync(api.steps)
    metrics = _sync(api.metrics)
    cancel = _sync(api.cancel)
    decide = _sync(api.decide)
    approve = _sync(api.approve)
    reject = _sync(api.reject)
    respond = _sync(api.respond)
    events = _sync_iter(api.events)
    wait = _sync(api.wait)
    # usage
    usage = _sync(api.usage)

    # spending controls
    budgets = _sync(api.budgets)
    create_budget = _sync(api.create_budget)
    delete_budget = _sync(api.delete_budget)
    rate_limits = _sync(api.rate_limits)
    create_rate_limit = _sync(api.create_rate_limit)
    delete_rate_limit = _sync(api.delete_rate_limit)
    markup = _sync(api.markup)
    set_markup = _sync(api.set_markup)
    egress = _sync(api.egress)
    set_egress = _sync(api.set_egress)
    clear_egress = _sync(api.clear_egress)
    providers_health = _sync(api.providers_health)

    # memory
    store_memory = _sync(api.store_memory)
    search_memory = _sync(api.search_memory)
    delete_memory = _sync(api.delete_memory)

    # artifacts
    artifacts = _sync(api.artifacts)
    download_artifact = _sync(api.download_artifact)

    # dead letters
    dead_letters = _sync(api.dead_letters)
    redrive = _sync(api.redrive)


class AsyncClient:
    """Asynchronous client with the same methods as :class:`Client`: awaitable, and async
    iterators for ``iter_runs`` and ``events``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(api_key or token), timeout=timeout
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    aclose = close  # httpx's name

    async def _perform(self, operation: Operation[T]) -> T:
        if isinstance(operation, Call):
            return await self._send(operation)
        reply: Any = None
        error: ApiError | None = None
        with closing(operation):
            while True:
                try:
                    step = operation.send(reply) if error is None else operation.throw(error)
                except StopIteration as done:
                    result: T = done.value
                    return result
                reply, error = await self._step(step)

    async def _iterate(self, feed: Feed[T]) -> AsyncIterator[T]:
        reply: Any = None
        error: ApiError | None = None
        with closing(feed):
            while True:
                try:
                    step = feed.send(reply) if error is None else feed.throw(error)
                except StopIteration:
                    return
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.item
                elif isinstance(step, Stream):
                    async for item in self._stream(step):
                        yield item
                else:
                    reply, error = await self._step(step)

    async def _step(self, step: Step) -> tuple[Any, ApiError | None]:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, UseToken):
            self._http.headers.update(_headers(step.token))
        else:
            try:
                return await self._send(step), None
            except ApiError as exc:
                return None, exc
        return None, None

    async def _send(self, call: Call[T]) -> T:
        response = await self._http.request(call.method, call.path, **_request_args(call))
        return call.result(response)

    async def _stream(self, stream: Stream[T]) -> AsyncIterator[T]:
        call = stream.call
        async with self._http.stream(
            call.method, call.path, **_request_args(call), timeout=None
        ) as response:
            if not response.is_success:
                await response.aread()
                raise_for(response)
            async for line in response.aiter_lines():
                item = stream.parse(line)
                if item is not None:
                    yield item

    health = _async(api.health)
    # accounts
    register = _async(api.register)
    login = _async(api.login)
    logout = _async(api.logout)
    me = _async(api.me)
    # workspaces and members
    create_workspace = _async(api.create_workspace)
    workspaces = _async(api.workspaces)
    workspace = _async(api.workspace)
    rename_workspace = _async(api.rename_workspace)
    delete_workspace = _async(api.delete_workspace)
    members = _async(api.members)
    add_member = _async(api.add_member)
    change_member_role = _async(api.change_member_role)
    remove_member = _async(api.remove_member)
    # API keys
    create_api_key = _async(api.create_api_key)
    api_keys = _async(api.api_keys)
    revoke_api_key = _async(api.revoke_api_key)
    # a workspace's own model providers
    create_provider = _async(api.create_provider)
    providers = _async(api.providers)
    provider = _async(api.provider)
    update_provider = _async(api.update_provider)
    delete_provider = _async(api.delete_provider)
    # workflows
    create_workflow = _async(api.create_workflow)
    push_workflow = _async(api.push_workflow)
    workflows = _async(api.workflows)
    workflow = _async(api.workflow)
    update_workflow = _async(api.update_workflow)
    delete_workflow = _async(api.delete_workflow)
    versions = _async(api.versions)
    # runs
    start_run = _async(api.start_run)
    run = _async(api.run)
    runs = _async(api.runs)
    iter_runs = _async_iter(api.iter_runs)
    steps = _async(api.steps)
    metrics = _async(api.metrics)
    cancel = _async(api.cancel)
    decide = _async(api.decide)
    approve = _async(api.approve)
    reject = _async(api.reject)
    respond = _async(api.respond)
    events = _async_iter(api.events)
    wait = _async(api.wait)
    # usage
    usage = _async(api.usage)

    # spending controls
    budgets = _async(api.budgets)
    create_budget = _async(api.create_budget)
    delete_budget = _async(api.delete_budget)
    rate_limits = _async(api.rate_limits)
    create_rate_limit = _async(api.create_rate_limit)
    delete_rate_limit = _async(api.delete_rate_limit)
    markup = _async(api.markup)
    set_markup = _async(api.set_markup)
    egress = _async(api.egress)
    set_egress = _async(api.set_egress)
    clear_egress = _async(api.clear_egress)
    providers_health = _async(api.providers_health)

    # memory
    store_memory = _async(api.store_memory)
    search_memory = _async(api.search_memory)
    delete_memory = _async(api.delete_memory)

    # artifacts
    artifacts = _async(api.artifacts)
    download_artifact = _async(api.download_artifact)

    # dead letters
    dead_letters = _async(api.dead_letters)
    redrive = _async(api.redrive)

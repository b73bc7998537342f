"""The FastAPI application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis.asyncio import Redis

from agentmill import __version__
from agentmill.api.body_guard import JsonBodyGuard
from agentmill.api.closing import Closing
from agentmill.api.documented_errors import API_ERRORS
from agentmill.api.errors import BodySizeLimit, ErrorBoundary, install_error_handlers
from agentmill.api.headers import SecurityHeaders
from agentmill.api.login_guard import LoginGuard
from agentmill.api.passwords import PasswordHasher
from agentmill.api.routes import (
    api_keys,
    artifacts,
    auth,
    dead_letters,
    egress,
    events,
    health,
    home,
    invitations,
    memory,
    openai_compat,
    providers,
    runs,
    spending,
    streams,
    usage,
    workflows,
    workspaces,
)
from agentmill.config import Settings, get_settings
from agentmill.engine.engine import Engine
from agentmill.queue import queue_backend
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade


def _operation_id(route: APIRoute) -> str:
    """Stable OpenAPI operation ids, ``{tag}-{name}``, so generated clients keep their names."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    workers: bool = True,
    bind_host: str = "127.0.0.1",
) -> FastAPI:
    """The API. With ``workers`` (embedded mode) it also runs the engine's worker in-process,
    which picks up unfinished runs from before a restart."""
    settings = settings or get_settings()
    url = database_url or settings.resolved_database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.from_settings(settings, url)
        await upgrade(db)
        await db.start()
        engine = Engine(db, settings=settings)
        app.state.db = db
        app.state.settings = settings
        app.state.engine = engine
        app.state.live = engine.live  # token deltas and tool notices for the run streams
        app.state.gateway = engine.gateway  # the /v1 endpoints share the engine's gateway
        stop = asyncio.Event()
        worker = (
            asyncio.create_task(engine.worker(name="embedded", queues=None).run(stop))
            if workers
            else None
        )
        app.state.worker = worker
        # Only for /health: workers talk to the Redis queue, the API does not.
        redis = (
            Redis.from_url(settings.queue_url)
            if settings.queue_url and queue_backend(settings.queue_url) == "redis"
            else None
        )
        app.state.redis = redis
        app.state.login_guard = LoginGuard(settings)
        app.state.passwords = PasswordHasher(settings.password_hash_concurrency)
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            if redis is not None:
                await redis.aclose()
            await app.state.login_guard.aclose()
            await engine.aclose()
            await db.close()

    app = FastAPI(
        title="AgentMill",
        version=__version__,
        description="Durable multi-agent AI workflows: accounts, workspaces, workflows and runs.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    install_error_handlers(app)
    app.state.closing = Closing()  # set by the server on Ctrl-C/SIGTERM: event streams end
    # Outermost last: the boundary answers any bug inside, the size limit bounds what the
    # JSON guard reads.
    app.add_middleware(JsonBodyGuard)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(ErrorBoundary)
    app.add_middleware(SecurityHeaders)  # on every answer, the boundary's 500 included
    modules = (
        auth,
        workspaces,
        invitations,
        api_keys,
        providers,
        workflows,
        runs,
        events,
        streams,
        usage,
        dead_letters,
        spending,
        egress,
        memory,
        artifacts,
    )
    # /v1 (OpenAI's API, for OpenAI SDKs) first: routes are matched in order, and the gateway's
    # calls are the ones where a fraction of a millisecond counts.
    app.include_router(openai_compat.router)
    for module in modules:
        app.include_router(
            module.router, prefix="/api/v1", responses=API_ERRORS
        )  # flat: each nesting costs per request
    app.include_router(health.router)
    app.include_router(home.router)
    app.state.bind_host = bind_host
    return app

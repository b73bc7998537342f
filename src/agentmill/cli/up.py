"""``agentmill up``: the API, the embedded worker and (soon) the UI, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from rich.console import Console
from rich.markup import escape
from uvicorn.lifespan.on import LifespanOn

from agentmill.api.app import create_app
from agentmill.api.bootstrap import bootstrap
from agentmill.api.closing import Closing
from agentmill.cli.credentials import save_credentials
from agentmill.cli.http_server import server_config
from agentmill.config import Settings, read_config_file
from agentmill.domain.spec import HumanStep, WorkflowSpec
from agentmill.domain.validation import load_workflow_file
from agentmill.engine.engine import Engine
from agentmill.gateway.config import parse_gateway_config
from agentmill.secret_key import LEGACY_DEFAULT_SECRET, with_secret
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade
from agentmill.store.repositories import providers
from agentmill.tools.registry import parse_tool_settings


def check_config(settings: Settings) -> None:
    """Read ``agentmill.yaml`` as the server will, so a mistake in it stops the start before
    anything is created (a ConfigError naming the file and field)."""
    data, source = read_config_file(settings.config)
    parse_gateway_config(data, os.environ, source=source)
    parse_tool_settings(data, source)


async def _adopt_legacy_keys(db: Database, settings: Settings) -> int:
    """Earlier releases ran without a key of their own on the built-in one: the provider keys
    they stored move to the generated key, so upgrading does not lose them."""
    return await db.write(
        lambda tx: providers.reseal_keys(
            tx, old_secret=LEGACY_DEFAULT_SECRET, new_secret=settings.secret()
        )
    )


def _read_examples(folder: Path) -> list[tuple[WorkflowSpec, str]]:
    return [(load_workflow_file(file), file.read_text()) for file in sorted(folder.glob("*.yaml"))]


async def load_examples(
    db: Database, settings: Settings, workspace_id: str, folder: Path
) -> list[WorkflowSpec]:
    """Put the example workflows into the new workspace and start a run of each."""
    engine = Engine(db, settings=settings)
    started = []
    try:
        for spec, source in await asyncio.to_thread(_read_examples, folder):
            version = await engine.register(spec, source, workspace_id=workspace_id)
            await engine.start_run(version, {})
            started.append(spec)
    finally:
        await engine.aclose()
    return started


def _human_steps(specs: list[WorkflowSpec]) -> list[tuple[str, HumanStep]]:
    """The top-level human steps of the examples: where their runs will wait for a person."""
    return [(spec.name, s) for spec in specs for s in spec.steps if isinstance(s, HumanStep)]


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    database_url: str,
    console: Console,
    examples: Path | None = None,
    workers: bool = True,
) -> None:
    """Serve the API (and, with ``workers``, run steps in this process too)."""
    check_config(settings)
    own_key = settings.secret_key is None  # then the one in <home>/secret_key
    settings = with_secret(settings, embedded=workers)
    db = Database(database_url)
    await upgrade(db)
    await db.start()
    try:
        resealed = await _adopt_legacy_keys(db, settings) if own_key else 0
        first = await bootstrap(db)
        loaded = (
            await load_examples(db, settings, first.workspace_id, examples)
            if first is not None and examples is not None
            else []
        )
    finally:
        await db.close()
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    console.print(f"[bold]AgentMill[/] is running at [link={url}]{url}[/]  (API docs: {url}/docs)")
    console.print(f"database: {escape(database_url)}")
    if resealed:
        console.print(
            f"{resealed} workspace provider key(s) stored under the old built-in secret key are "
            f"now encrypted under this server's own key ({escape(str(settings.home))}/secret_key)"
        )
    if first is not None:
        console.print("first start: an owner account, a workspace and an API key were created.")
        saved = save_credentials(settings.home, first, url)
        console.print(
            "[yellow]They are shown this once and saved in "
            f"{escape(str(saved.resolve()))} (readable by you only); keep them somewhere safe.[/]"
        )
        console.print(f"  email:     {first.email}")
        console.print(f"  password:  {escape(first.password)}")
        console.print(f"  workspace: {first.workspace_id}")
        console.print(f"  API key:   {escape(first.api_key)}")
    if loaded:
        console.print(
            f"demo: loaded {len(loaded)} example workflows and started a run of each "
            f"({', '.join(spec.name for spec in loaded)}); see them at {url}/"
        )
        waiting = _human_steps(loaded)
        if waiting:
            console.print(f"these wait for a person (try it in {url}/docs):")
        for name, step in waiting:
            action = 'respond  (body: {"answer": {…}})' if step.form else "approve"
            console.print(f"  {name}: POST {url}/api/v1/runs/<run id>/steps/{step.id}/{action}")
    if not workers:
        console.print("this process serves the API only: start `agentmill worker` to run steps")
    console.print("Press Ctrl-C to stop.")
    app = create_app(settings, database_url=database_url, workers=workers, bind_host=host)
    server = _Server(
        server_config(
            app,
            host=host,
            port=port,
            header_timeout=settings.http_header_timeout,
            keep_alive=settings.http_keep_alive,
            max_connections=settings.http_max_connections,
        )
    )
    closing: Closing = app.state.closing
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        closing.set()  # open event streams end now, so the server need not wait for them
        server.request_exit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await server.serve()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    console.print("stopped.")


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling: Ctrl-C or SIGTERM finishes in-flight requests,
    stops the worker and exits 0 (uvicorn would re-raise the signal after shutting down)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        if self.should_exit:
            self.force_exit = True  # a second Ctrl-C stops waiting for open connections
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:  # hang up on requests still open: they end as the client had left
            for connection in list(self.server_state.connections):
                connection.transport.close()
            if self.server_state.tasks:
                await asyncio.wait(set(self.server_state.tasks), timeout=1.0)
        # uvicorn skips the app's shutdown on a forced exit; ours stops the worker (giving its
        # steps back) and closes the database, so it runs anyway. It takes moments.
        lifespan = self.lifespan
        if isinstance(lifespan, LifespanOn) and not lifespan.shutdown_event.is_set():
            await lifespan.shutdown()


def run_up(
    settings: Settings,
    *,
    host: str,
    port: int,
    database_url: str,
    examples: Path | None = None,
    workers: bool = True,
) -> None:
    console = Console(highlight=False, soft_wrap=True)
    asyncio.run(
        serve(
            settings,
            host=host,
            port=port,
            database_url=database_url,
            console=console,
            examples=examples,
            workers=workers,
        )
    )

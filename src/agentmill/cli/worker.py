"""``agentmill worker``: a process that only runs steps, beside any number of others."""

from __future__ import annotations

import asyncio
import signal

import structlog
from rich.console import Console
from rich.markup import escape
from sqlalchemy.engine import make_url

from agentmill.config import Settings
from agentmill.domain.spec import DEFAULT_QUEUE
from agentmill.engine.engine import Engine
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade

log = structlog.get_logger("agentmill.worker")


async def work(
    settings: Settings,
    *,
    database_url: str,
    name: str | None,
    concurrency: int,
    grace_seconds: float,
    console: Console,
    queues: tuple[str, ...] = (DEFAULT_QUEUE,),
) -> None:
    """Run steps until SIGTERM or Ctrl-C; then stop taking work, let in-flight steps finish
    for up to ``grace_seconds``, and give the rest back so other workers take them at once.
    A second signal stops waiting."""
    settings.secret()  # refuse to start without one: steps need it for providers and webhooks
    db = Database.from_settings(settings, database_url)
    await upgrade(db)
    await db.start()
    stop = asyncio.Event()
    engine = Engine(db, settings=settings)
    worker = engine.worker(
        name=name, concurrency=concurrency, grace_seconds=grace_seconds, queues=queues
    )
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            console.print("stopping now; unfinished steps go back to the queue")
            worker.hurry()
            return
        console.print(
            f"stopping: no new work; {worker.in_flight} steps in flight get up to "
            f"{grace_seconds:g}s to finish (signal again to stop now)"
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    url = make_url(database_url).render_as_string(hide_password=True)
    console.print(
        f"worker {escape(worker.owner)} running: up to {concurrency} steps at once, "
        f"queues {escape(', '.join(queues))}, database {escape(url)}. "
        "Ctrl-C or SIGTERM stops it cleanly."
    )
    log.info("worker serving queues", worker=worker.owner, queues=list(queues))
    try:
        await worker.run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engine.aclose()
        await db.close()
    console.print("stopped.")


def run_worker(
    settings: Settings,
    *,
    database_url: str,
    name: str | None,
    concurrency: int,
    grace_seconds: float,
    queues: tuple[str, ...] = (DEFAULT_QUEUE,),
) -> None:
    console = Console(highlight=False, soft_wrap=True, stderr=True)
    asyncio.run(
        work(
            settings,
            database_url=database_url,
            name=name,
            concurrency=concurrency,
            grace_seconds=grace_seconds,
            console=console,
            queues=queues,
        )
    )

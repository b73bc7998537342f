"""``agentmill``: run, validate and manage workflows from the terminal."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from agentmill.errors import SpecError

app = typer.Typer(
    name="agentmill",
    help="AgentMill: durable multi-agent AI workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _add_remote_commands() -> None:
    from agentmill.cli.remote import artifacts_app, dead_letters_app, runs_app, workflows_app

    app.add_typer(workflows_app, name="workflows")
    app.add_typer(runs_app, name="runs")
    app.add_typer(artifacts_app, name="artifacts")
    app.add_typer(dead_letters_app, name="dead-letters")


_add_remote_commands()

err = Console(stderr=True, highlight=False, soft_wrap=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="AGENTMILL_DATABASE_URL",
        help="Database URL (default: .agentmill/agentmill.db).",
    ),
]


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Workflow files (YAML or JSON).", show_default=False)
    ],
) -> None:
    """Check workflow files and print every problem with its line and column."""
    from agentmill.domain.validation import load_workflow_file

    failed = False
    for file in files:
        try:
            spec = load_workflow_file(file)
        except SpecError as exc:
            failed = True
            count = len(exc.problems)
            err.print(f"[red]✗[/] {escape(str(file))}: {count} problem{'s' if count != 1 else ''}")
            for problem in exc.problems:
                err.print(f"  {problem}", markup=False)
            continue
        err.print(
            f"[green]✓[/] {escape(str(file))}: workflow {spec.name!r} is valid ({len(spec.steps)} steps)"
        )
    raise typer.Exit(1 if failed else 0)


@app.command()
def run(
    file: Annotated[
        Path | None, typer.Argument(help="Workflow file to run.", show_default=False)
    ] = None,
    input_: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="An input as key=value (JSON for non-string inputs). Repeatable."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON result; no live view.")
    ] = False,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve every human step.")
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue an unfinished run by its id.", show_default=False),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="AGENTMILL_DATABASE_URL",
            help="Database URL (default: .agentmill/agentmill.db). [bold]sqlite:///:memory:[/] "
            "keeps nothing: the run and its artifacts go when the command ends, and it cannot "
            "be resumed.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show engine logs.")] = False,
) -> None:
    """Run a workflow in this process and show its progress; exit 0 when it completes.

    The run is stored in the database (so [bold]--resume[/] can continue it), unless --db is
    sqlite:///:memory: (an in-memory run, not resumable).

    Exit codes: 0 completed, 1 failed or cancelled, 2 invalid workflow, inputs or
    configuration, 3 waiting for a human decision, 130 interrupted (the run is cancelled).
    """
    from agentmill.cli.runner import RunOptions, run_command
    from agentmill.observability.logging import configure_logging

    configure_logging("INFO" if verbose else "WARNING")
    if file is None and resume is None:
        err.print("[red]error:[/] give a workflow FILE, or --resume RUN_ID")
        raise typer.Exit(2)
    options = RunOptions(
        file=file,
        inputs=input_ or [],
        json_output=json_output,
        auto_approve=auto_approve,
        resume=resume,
        database_url=db,
    )
    import asyncio

    raise typer.Exit(asyncio.run(run_command(options)))


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    db: DbOption = None,
    examples: Annotated[
        Path | None,
        typer.Option(help="On the first start, load the workflows in this folder and run each."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show engine logs.")] = False,
) -> None:
    """Start AgentMill: the API and the embedded workers, on this machine.

    On the first start it creates an owner account, a workspace and an API key and prints them
    once. Unfinished runs from before a restart carry on. Ctrl-C stops it cleanly.
    """
    from agentmill.cli.up import run_up
    from agentmill.config import get_settings
    from agentmill.observability.logging import configure_logging

    configure_logging("INFO" if verbose else "WARNING")
    settings = get_settings()
    run_up(
        settings,
        host=host,
        port=port,
        database_url=db or settings.resolved_database_url,
        examples=examples,
    )


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    db: DbOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show engine logs.")] = False,
) -> None:
    """Serve the API only (distributed mode): steps run in `agentmill worker` processes.

    Start as many as you like behind a load balancer, all on the same PostgreSQL database.
    Migrates the database and, on the very first start, creates the first owner.
    """
    from agentmill.cli.up import run_up
    from agentmill.config import get_settings
    from agentmill.observability.logging import configure_logging

    configure_logging("INFO" if verbose else "WARNING")
    settings = get_settings()
    run_up(
        settings,
        host=host,
        port=port,
        database_url=db or settings.resolved_database_url,
        workers=False,
    )


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Steps run at once (default: AGENTMILL_WORKER_CONCURRENCY, 1000)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="A name for logs and /health (default: worker).")
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            help="On SIGTERM/Ctrl-C, seconds in-flight steps get to finish before they are "
            "given back to the queue."
        ),
    ] = 30.0,
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            help="A named queue to serve (a step's `queue:` in the spec); repeat it to serve "
            "several. Default: default.",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Run steps only (distributed mode), beside any number of other workers.

    Takes ready steps of the named queues it serves, holds a lease on each with heartbeats,
    and records results. A killed worker's steps are taken over when their leases expire.
    """
    from agentmill.domain.spec import DEFAULT_QUEUE, check_queue_name

    queues = tuple(dict.fromkeys(queue or [DEFAULT_QUEUE]))
    for name_ in queues:
        try:
            check_queue_name(name_)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--queue") from None
    from agentmill.cli.worker import run_worker
    from agentmill.config import get_settings
    from agentmill.observability.logging import configure_logging

    configure_logging("INFO")
    settings = get_settings()
    run_worker(
        settings,
        database_url=db or settings.resolved_database_url,
        name=name,
        concurrency=concurrency or settings.worker_concurrency,
        grace_seconds=grace,
        queues=queues,
    )


@db_app.command("upgrade")
def db_upgrade(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or migrate the database schema."""
    from agentmill.config import get_settings
    from agentmill.store.db import Database
    from agentmill.store.migrate import upgrade

    url = db or get_settings().resolved_database_url

    import asyncio

    async def main() -> None:
        await upgrade(Database(url), revision)

    asyncio.run(main())
    err.print(f"[green]✓[/] database at {escape(_redact(url))} is at revision {escape(revision)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    """Entry point: run the app; report errors in one line, never as a traceback."""
    from agentmill.errors import AgentMillError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except AgentMillError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        reason = getattr(exc, "orig", None) or exc
        err.print(f"[red]error:[/] database unavailable: {escape(str(reason))}")
        sys.exit(1)
    finally:
        # The process ends here: without this, the interpreter's last garbage collection walks
        # every object the engine's imports made (0.3-1 s for `agentmill run`). Frozen objects
        # are skipped; atexit handlers and buffered output still run and flush as usual.
        gc.freeze()


def _is_database_error(exc: Exception) -> bool:
    if isinstance(exc, OSError):
        return True
    # SQLAlchemy costs ~0.1 s to import: only a command that loaded it can have raised its errors
    if "sqlalchemy.exc" not in sys.modules:
        return False
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(exc, (OperationalError, DBAPIError))

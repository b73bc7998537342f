"""``agentmill run``: validate, run in-process on the local database, show progress, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.prompt import Confirm, Prompt
from rich.text import Text

from agentmill.cli.forms import ask_answer
from agentmill.cli.progress import Progress
from agentmill.config import get_settings
from agentmill.domain.inputs import InvalidInputs, parse_cli_value
from agentmill.domain.spec import WorkflowSpec
from agentmill.domain.states import RunStatus, StepStatus
from agentmill.domain.validation import load_workflow_file
from agentmill.engine.engine import Engine
from agentmill.errors import NotFound, SpecError
from agentmill.secret_key import with_secret
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade
from agentmill.store.queries import RunView

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_WAITING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    file: Path | None
    inputs: list[str]
    json_output: bool
    auto_approve: bool
    resume: str | None
    database_url: str | None
    in_memory: bool = False  # the database goes when the command ends: nothing to resume


def is_in_memory(url: str | None) -> bool:
    """``sqlite:///:memory:`` (or ``sqlite://``): a run kept only while the command lasts."""
    if url is None:
        return False
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


async def run_command(options: RunOptions) -> int:
    if not is_in_memory(options.database_url):
        return await _run_command(options)
    if options.resume:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(
            "[red]error:[/] an in-memory database keeps nothing between commands, so there is "
            "no run to resume; give the --db the run was started with"
        )
        return EXIT_INVALID
    # The engine reads and writes on several connections (a writer, readers, the event loop's):
    # one SQLite memory database cannot be shared by them, so a throwaway file stands in for
    # it, deleted with everything the run stored (artifacts included) when the command ends.
    with tempfile.TemporaryDirectory(prefix="agentmill-run-") as folder:
        url = f"sqlite:///{Path(folder) / 'run.db'}"
        return await _run_command(replace(options, database_url=url, in_memory=True))


async def _run_command(options: RunOptions) -> int:
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    spec: WorkflowSpec | None = None
    given: dict[str, Any] = {}
    if options.file is not None and options.resume is None:
        try:
            spec = load_workflow_file(options.file)
        except SpecError as exc:
            err.print(f"[red]✗[/] {escape(str(options.file))} is not a valid workflow:")
            for problem in exc.problems:
                err.print(f"  {problem}", markup=False)
            return EXIT_INVALID
        try:
            given = _parse_inputs(spec, options.inputs)
        except ValueError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            return EXIT_INVALID

    settings = with_secret(get_settings(), embedded=True)
    db = Database.from_settings(settings, options.database_url)
    await upgrade(db)
    await db.start()
    engine = Engine(db, settings=settings)
    try:
        if options.resume:
            try:
                run = await engine.get_run(options.resume)
            except NotFound:
                err.print(f"[red]error:[/] no run {escape(repr(options.resume))} in this database")
                return EXIT_INVALID
            run_id = run.id
        else:
            assert spec is not None
            version = await engine.register(spec, source=_read_source(options.file))
            try:
                run_id = await engine.start_run(version, given)
            except InvalidInputs as exc:
                err.print("[red]error:[/] invalid inputs:")
                for message in exc.problems:
                    err.print(f"  {message}", markup=False)
                return EXIT_INVALID
        return await _drive(engine, run_id, options, out, err)
    finally:
        await engine.aclose()
        await db.close()


async def _drive(
    engine: Engine, run_id: str, options: RunOptions, out: Console, err: Console
) -> int:
    run = await engine.get_run(run_id)
    started = time.monotonic()
    progress = Progress(err, run_id, f"{run.workflow} · {run_id}")
    if options.resume:
        prefixes, steps = await _stored_state(engine, run_id)
        progress.seed(prefixes, steps)
    if not options.json_output:
        verb = "resuming" if options.resume else "running"
        err.print(f"▶ {verb} [bold]{escape(run.workflow)}[/] · run {run_id}")
    unsubscribe = engine.db.subscribe(progress.on_events) if not options.json_output else None
    # On a terminal, the running step's note shows its model writing (steps stream only while
    # someone follows, so not when the output goes to a file or a program).
    unfollow = (
        await engine.live.subscribe(run_id, progress.on_live)
        if progress.interactive and not options.json_output
        else None
    )
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)

    async def on_waiting(run: RunView) -> None:
        await _decide(engine, run, options, progress, err)

    waiting_possible = options.auto_approve or sys.stdin.isatty()
    try:
        with progress if not options.json_output else contextlib.nullcontext():
            work = asyncio.create_task(
                engine.run_until_settled(
                    run_id, on_waiting=on_waiting if waiting_possible else None
                )
            )
            stop = asyncio.create_task(interrupted.wait())
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                await engine.cancel(run_id, "cancelled from the terminal (interrupt)")
                err.print(f"\n[yellow]interrupted:[/] run {run_id} cancelled")
                return EXIT_INTERRUPTED
            stop.cancel()
            try:
                run = work.result()
            except CannotAnswer as exc:
                err.print(f"[red]error:[/] {escape(str(exc))}")
                return EXIT_FAILED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if unsubscribe:
            unsubscribe()
        if unfollow:
            unfollow()
    return await _report(engine, run, options, out, err, time.monotonic() - started)


class CannotAnswer(Exception):
    """--auto-approve met a form without a default answer."""


async def _decide(
    engine: Engine, run: RunView, options: RunOptions, progress: Progress, err: Console
) -> None:
    for step in await _waiting_steps(engine, run.id):
        waiting = await _waiting_event(engine, step.run_id, step.key)
        form, default = waiting.get("form"), waiting.get("default")
        if options.auto_approve:
            if form is not None and default is None:
                raise CannotAnswer(
                    f"step {step.key!r} asks for a form and has no 'default' answer, so "
                    f"--auto-approve cannot answer it; answer it on a terminal with "
                    f"agentmill run --resume {run.id}"
                )
            await engine.decide(
                step.run_id, step.key, approved=True, by="auto-approve", answer=default
            )
            how = "answered with its default" if form is not None else "approved automatically"
            err.print(f"  [magenta]⏸[/] {escape(step.key)}: {how} (--auto-approve)")
            continue
        progress.pause()
        message = waiting.get("message")
        body = Text(str(message)) if message is not None else Text("(no message)", style="dim")
        title = "form" if form is not None else "approval needed"
        err.print(Panel(body, title=f"{title}: {escape(step.key)}", expand=False))
        approved = await _ask(lambda: Confirm.ask("Approve?", console=err, default=True))
        answer = await ask_answer(form, default, err, _ask) if form and approved else None
        comment = await _ask(
            lambda: Prompt.ask("Comment (optional)", console=err, default="", show_default=False)
        )
        await engine.decide(
            step.run_id,
            step.key,
            approved=approved,
            by="terminal",
            comment=comment or None,
            answer=answer,
        )
        progress.resume()


async def _ask(question: Callable[[], T]) -> T:
    """Ask on the terminal without blocking the event loop. The reader is a daemon thread so
    that Ctrl-C during a prompt ends the program instead of waiting for the Enter key."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(cast(T, value))

    def read() -> None:
        try:
            value = question()
        except BaseException as exc:  # EOF, or the terminal went away
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=read, name="agentmill-prompt", daemon=True).start()
    return await answer


async def _waiting_steps(engine: Engine, root_run_id: str) -> list[Any]:
    _prefixes, steps = await _stored_state(engine, root_run_id)
    return [s for s in steps if s.status == StepStatus.WAITING]


async def _waiting_event(engine: Engine, run_id: str, step_key: str) -> dict[str, Any]:
    """The data of the step's ``step.waiting`` event: message, and form and default if any."""
    for event in reversed(await engine.events(run_id=run_id)):
        if event["type"] == "step.waiting" and event["step_key"] == step_key:
            return dict(event["data"])
    return {}


async def _stored_state(engine: Engine, root_run_id: str) -> tuple[dict[str, str], list[Any]]:
    """Steps of a run and of its sub-runs, with display prefixes for the sub-runs."""
    prefixes = {root_run_id: ""}
    pending = [root_run_id]
    all_steps = []
    while pending:
        run_id = pending.pop()
        steps = await engine.steps(run_id)
        for step in steps:
            if step.child_run_id:
                prefixes[step.child_run_id] = prefixes[run_id] + f"{step.key} › "
                pending.append(step.child_run_id)
        all_steps.extend(steps)
    return prefixes, all_steps


async def _report(
    engine: Engine, run: RunView, options: RunOptions, out: Console, err: Console, elapsed: float
) -> int:
    code = {RunStatus.COMPLETED: EXIT_OK, RunStatus.WAITING: EXIT_WAITING}.get(
        run.status, EXIT_FAILED
    )
    if options.json_output:
        steps = await engine.steps(run.id)
        payload = {
            "run_id": run.id,
            "workflow": run.workflow,
            "status": run.status,
            "outputs": run.outputs,
            "error": run.error,
            "usage": {
                "input_tokens": run.input_tokens,
                "output_tokens": run.output_tokens,
                "cost": str(run.cost),
            },
            "steps": [
                {
                    "key": s.key,
                    "status": s.status,
                    "attempt": s.attempt,
                    "duration_ms": s.duration_ms,
                    "error": s.error,
                }
                for s in steps
            ],
        }
        out.print_json(json.dumps(payload, default=str))
        return code
    if run.status == RunStatus.COMPLETED and run.outputs:
        err.print("[bold]outputs[/]")
        for key, value in run.outputs.items():
            text = (
                value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
            )
            out.print(Text.assemble((f"{key}: ", "bold cyan"), text))
    usage = f"{run.input_tokens + run.output_tokens} tokens, ${_money(run.cost)}"
    style = {EXIT_OK: "green", EXIT_WAITING: "magenta"}.get(code, "red")
    err.print(f"[{style}]{run.status.lower()}[/] in {elapsed:.2f}s · {usage} · run {run.id}")
    if run.error:
        err.print(f"[red]error:[/] {escape(run.error)}")
    if run.status == RunStatus.WAITING and options.in_memory:
        err.print(
            "waiting for a decision: an in-memory run cannot be resumed; run it again with "
            "--auto-approve, or on a terminal, or with a database file (--db)"
        )
    elif run.status == RunStatus.WAITING:
        err.print(
            f"waiting for a decision: approve on a terminal with "
            f"[bold]agentmill run --resume {run.id}[/], or pass --auto-approve"
        )
    return code


def _parse_inputs(spec: WorkflowSpec, pairs: list[str]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input {pair!r} is not of the form key=value")
        given[key.strip()] = parse_cli_value(spec.inputs.get(key.strip()), value)
    return given


def _read_source(file: Path | None) -> str | None:
    if file is None:
        return None
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _money(value: Decimal) -> str:
    return f"{value:.6f}" if value else "0"

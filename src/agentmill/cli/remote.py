"""Commands that talk to a running server: ``agentmill workflows …``, ``agentmill runs …``,
``agentmill artifacts …`` and ``agentmill dead-letters …``."""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from agentmill.client import ApiError

if TYPE_CHECKING:
    from agentmill.client import Client

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

workflows_app = typer.Typer(help="Workflows on a server.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs on a server.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Files a run's steps wrote, on a server.", no_args_is_help=True)
dead_letters_app = typer.Typer(
    help="Steps that failed for good on a server, and re-driving them.", no_args_is_help=True
)

Server = Annotated[str, typer.Option("--server", envvar="AGENTMILL_SERVER", help="Server URL.")]
ApiKey = Annotated[
    str, typer.Option("--api-key", envvar="AGENTMILL_API_KEY", help="API key (or a login token).")
]
Workspace = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="AGENTMILL_WORKSPACE",
        help="Workspace id (default: your only one).",
    ),
]
DEFAULT_SERVER = "http://127.0.0.1:8000"


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A table on a terminal (ids never cut); tab-separated lines when piped, for scripts."""
    if not out.is_terminal:  # written as is: rich would expand the tabs to spaces
        for line in (headers, *rows):
            out.file.write("\t".join(line) + "\n")
        return
    from rich.table import Table

    table = Table(*headers)
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max((len(r[0]) for r in rows), default=0)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)


def _client(server: str, api_key: str) -> Client:
    from agentmill.client import Client  # loads httpx: only for a command that calls a server

    return Client(server, api_key=api_key)


def _workspace(client: Client, given: str | None) -> str:
    if given:
        return given
    spaces = client.workspaces()
    if len(spaces) != 1:
        names = ", ".join(f"{w['id']} ({w['name']})" for w in spaces) or "none"
        raise typer.BadParameter(f"pick a workspace with --workspace: {names}")
    return str(spaces[0]["id"])


def _fail(exc: ApiError) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(exc.message)} [dim]({exc.status} {exc.code})[/]")
    if isinstance(exc.details, list):
        for detail in exc.details:
            if isinstance(detail, dict) and "line" in detail:
                err.print(
                    f"  line {detail['line']}:{detail['column']}: {detail['path']}: {detail['message']}",
                    markup=False,
                )
            else:
                err.print(f"  {detail}", markup=False)
    return typer.Exit(1)


@workflows_app.command("push")
def push(
    file: Annotated[Path, typer.Argument(help="Workflow file (YAML or JSON).")],
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = "",
    workspace: Workspace = None,
) -> None:
    """Create a workflow on the server, or add a version if it exists."""
    with _client(server, api_key) as client:
        try:
            workflow = client.push_workflow(_workspace(client, workspace), file.read_text())
        except ApiError as exc:
            raise _fail(exc) from None
    out.print(f"{workflow['name']} v{workflow['latest_version']} · {workflow['id']}")


@workflows_app.command("list")
def list_workflows(
    server: Server = DEFAULT_SERVER, api_key: ApiKey = "", workspace: Workspace = None
) -> None:
    """Workflows in the workspace."""
    with _client(server, api_key) as client:
        try:
            rows = client.workflows(_workspace(client, workspace))
        except ApiError as exc:
            raise _fail(exc) from None
    _print_table(
        ["id", "name", "version", "updated"],
        [[w["id"], w["name"], str(w["latest_version"]), w["updated_at"]] for w in rows],
    )


@runs_app.command("list")
def list_runs(
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = "",
    workspace: Workspace = None,
    status: Annotated[str | None, typer.Option(help="Only runs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 20,
) -> None:
    """Recent runs."""
    with _client(server, api_key) as client:
        try:
            page = client.runs(_workspace(client, workspace), status=status, limit=limit)
        except ApiError as exc:
            raise _fail(exc) from None
    _print_table(
        ["run", "workflow", "status", "created", "tokens", "cost"],
        [
            [
                r["id"],
                r["workflow"],
                r["status"],
                r["created_at"],
                str(r["input_tokens"] + r["output_tokens"]),
                str(r["cost"]),
            ]
            for r in page["runs"]
        ],
    )


@runs_app.command("show")
def show(
    run_id: str,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = "",
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A run and its steps."""
    with _client(server, api_key) as client:
        try:
            run, steps = client.run(run_id), client.steps(run_id)
        except ApiError as exc:
            raise _fail(exc) from None
    if json_output:
        out.print_json(json.dumps({**run, "steps": steps}, default=str))
        return
    out.print(f"[bold]{escape(run['workflow'])}[/] · {run['id']} · {run['status']}")
    if run["error"]:
        out.print(f"[red]error:[/] {escape(run['error'])}")
    _print_table(
        ["step", "status", "try", "ms", "tokens"],
        [
            [
                st["key"],
                st["status"],
                str(st["attempt"]),
                f"{st['duration_ms']:.1f}" if st["duration_ms"] is not None else "",
                str(st["input_tokens"] + st["output_tokens"]),
            ]
            for st in steps
        ],
    )
    if run["outputs"]:
        out.print_json(json.dumps(run["outputs"], default=str))


@runs_app.command("logs")
def logs(run_id: str, server: Server = DEFAULT_SERVER, api_key: ApiKey = "") -> None:
    """Follow a run's events until it ends."""
    with _client(server, api_key) as client:
        try:
            for event in client.events(run_id, live=False):  # the log, not token deltas
                out.print(_event_line(event), markup=False)
        except ApiError as exc:
            raise _fail(exc) from None


@runs_app.command("cancel")
def cancel(run_id: str, server: Server = DEFAULT_SERVER, api_key: ApiKey = "") -> None:
    """Cancel a run."""
    with _client(server, api_key) as client:
        try:
            run = client.cancel(run_id)
        except ApiError as exc:
            raise _fail(exc) from None
    out.print(f"{run['id']} · {run['status']}")


@artifacts_app.command("list")
def list_artifacts(run_id: str, server: Server = DEFAULT_SERVER, api_key: ApiKey = "") -> None:
    """A run's artifacts: name, size, media type and the step that wrote each."""
    with _client(server, api_key) as client:
        try:
            rows = client.artifacts(run_id)
        except ApiError as exc:
            raise _fail(exc) from None
    _print_table(
        ["name", "bytes", "type", "step", "sha256"],
        [[a["name"], str(a["size"]), a["media_type"], a["step"] or "", a["sha256"]] for a in rows],
    )


@artifacts_app.command("get")
def get_artifact(
    run_id: str,
    name: str,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to save it (default: its file name here; - for stdout)."
        ),
    ] = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = "",
) -> None:
    """Download one of a run's artifacts."""
    with _client(server, api_key) as client:
        try:
            data = client.download_artifact(run_id, name)
        except ApiError as exc:
            raise _fail(exc) from None
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = output or Path(PurePosixPath(name).name)
    target.write_bytes(data)
    err.print(f"saved {escape(name)} ({len(data)} bytes) to {escape(str(target))}")


@dead_letters_app.command("list")
def list_dead_letters(
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = "",
    workspace: Workspace = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 20,
) -> None:
    """Steps that exhausted their attempts (or hit an error that is not retried), with the last
    error. Re-drive one with `agentmill dead-letters redrive STEP_ID`."""
    with _client(server, api_key) as client:
        try:
            page = client.dead_letters(_workspace(client, workspace), limit=limit)
        except ApiError as exc:
            raise _fail(exc) from None
    _print_table(
        ["step", "run", "workflow", "key", "tries", "failed", "redrive", "error"],
        [
            [
                d["step_id"],
                d["root_run_id"],
                d["workflow"],
                d["step_key"],
                str(d["attempts"]),
                d["failed_at"],
                "yes" if d["redrivable"] else "no (the run went on)",
                d["error"] or "",
            ]
            for d in page["dead_letters"]
        ],
    )


@dead_letters_app.command("redrive")
def redrive(step_id: str, server: Server = DEFAULT_SERVER, api_key: ApiKey = "") -> None:
    """Run a dead letter again with a fresh set of attempts; its run continues from it."""
    with _client(server, api_key) as client:
        try:
            run = client.redrive(step_id)
        except ApiError as exc:
            raise _fail(exc) from None
    out.print(f"{step_id} re-driven · run {run['id']} · {run['status']}")


def _event_line(event: dict[str, Any]) -> str:
    where = f" {event['step']}" if event.get("step") else ""
    data = event.get("data") or {}
    detail = data.get("error") or data.get("message") or ""
    return f"{event['ts']} {event['type']}{where}" + (f" — {detail}" if detail else "")

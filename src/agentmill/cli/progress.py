"""Live progress of a run: a table on a terminal, one line per change elsewhere."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agentmill.store.queries import StepView

_STYLE = {
    "QUEUED": "dim",
    "RUNNING": "cyan",
    "RETRYING": "yellow",
    "WAITING": "magenta",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "SKIPPED": "dim",
    "CANCELLED": "dim red",
}
_ICON = {
    "QUEUED": "·",
    "RUNNING": "▶",
    "RETRYING": "↻",
    "WAITING": "⏸",
    "SUCCEEDED": "✓",
    "FAILED": "✗",
    "SKIPPED": "–",
    "CANCELLED": "✗",
}
_EVENT_STATUS = {
    "step.queued": "QUEUED",
    "step.redriven": "QUEUED",
    "step.resumed": "RUNNING",
    "step.started": "RUNNING",
    "step.retrying": "RETRYING",
    "step.waiting": "WAITING",
    "step.succeeded": "SUCCEEDED",
    "step.failed": "FAILED",
    "step.skipped": "SKIPPED",
    "step.cancelled": "CANCELLED",
    "step.fanout": "RUNNING",
    "step.child_run": "RUNNING",
}
_LIVE_NOTE = 60  # characters of a running step's streamed text shown in its note


@dataclass
class StepLine:
    name: str
    status: str = "QUEUED"
    attempt: int = 0
    started: float | None = None
    duration_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    note: str = ""
    streamed: str = ""  # the tail of what the running attempt's model wrote so far


class Progress:
    """Folds run events into per-step lines and shows them."""

    def __init__(self, console: Console, root_run_id: str, title: str) -> None:
        self.console = console
        self.root = root_run_id
        self.title = title
        self.lines: dict[str, StepLine] = {}
        self.prefix: dict[str, str] = {root_run_id: ""}  # run id -> "parent step › "
        self.live: Live | None = None
        self.interactive = console.is_terminal
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        if self.interactive:
            self.live = Live(
                self._render(), console=self.console, refresh_per_second=8, transient=False
            )
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(None, None, None)
            self.live = None

    def pause(self) -> None:
        """Stop redrawing (before a prompt)."""
        self.__exit__()

    def resume(self) -> None:
        if self.interactive and self.live is None:
            self.__enter__()

    def seed(self, run_prefixes: dict[str, str], steps: list[StepView]) -> None:
        """Start from what is stored (a resumed run)."""
        self.prefix.update(run_prefixes)
        for step in steps:
            line = self._line(step.run_id, step.key)
            line.status = step.status
            line.attempt = step.attempt
            line.input_tokens = step.input_tokens
            line.output_tokens = step.output_tokens
            line.cost = step.cost
            line.duration_s = step.duration_ms / 1000 if step.duration_ms else None

    def _line(self, run_id: str, key: str) -> StepLine:
        name = self.prefix.get(run_id, "…") + key
        line = self.lines.get(name)
        if line is None:
            line = self.lines[name] = StepLine(name=name)
        return line

    def on_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event["root_run_id"] != self.root:
                continue
            self._apply(event)
        if self.live is not None:
            self.live.update(self._render())

    def on_live(self, event: dict[str, Any]) -> None:
        """A live event of a running step: its note shows the end of what its model is
        writing, or the tool it is calling (redrawn at the table's pace, not per token)."""
        line = self.lines.get(self.prefix.get(event["run_id"], "…") + event["step_key"])
        if line is None or line.status != "RUNNING":
            return
        data: dict[str, Any] = event["data"]
        if event["type"] == "step.delta" and data.get("text"):
            line.streamed = (line.streamed + data["text"])[-4 * _LIVE_NOTE :]
            line.note = " ".join(line.streamed.split())[-_LIVE_NOTE:]
        elif event["type"] == "step.tool":
            line.note = f"calling {data.get('tool')}…" if data.get("phase") == "start" else ""
        if self.live is not None:
            self.live.update(self._render())

    def _apply(self, event: dict[str, Any]) -> None:
        kind: str = event["type"]
        data: dict[str, Any] = event["data"]
        key = event["step_key"]
        if kind == "step.child_run":
            self.prefix[data["child_run_id"]] = self.prefix.get(event["run_id"], "") + f"{key} › "
        if key is None or kind == "step.log":
            if kind == "step.log" and key is not None:
                self.console.print(f"  {key}: {data.get('message', '')}", markup=False)
            return
        line = self._line(event["run_id"], key)
        if kind == "llm.call":
            return
        status = _EVENT_STATUS.get(kind)
        if status is None:
            return
        if status == "RUNNING" and kind == "step.started":
            line.started = time.monotonic()
            line.streamed = ""
            line.attempt = event["attempt"] or line.attempt
        if kind in ("step.succeeded", "step.failed", "step.retrying"):
            line.input_tokens += int(data.get("input_tokens", 0))
            line.output_tokens += int(data.get("output_tokens", 0))
            line.cost += Decimal(str(data.get("cost", "0")))
            if line.started is not None:
                line.duration_s = time.monotonic() - line.started
        if kind == "step.retrying":
            line.note = f"retry in {data.get('delay', 0):.1f}s: {data.get('error', '')}"
        elif kind == "step.failed":
            line.note = str(data.get("error", ""))
        elif kind == "step.skipped":
            line.note = str(data.get("reason", ""))
        elif kind == "step.fanout":
            line.note = f"{data.get('items', 0)} items"
        elif kind == "step.waiting":
            line.note = "waiting for approval"
        elif status == "SUCCEEDED":
            line.note = ""
        line.status = status
        if not self.interactive and kind not in ("step.queued", "step.child_run"):
            self._print_line(line)

    def _print_line(self, line: StepLine) -> None:
        text = Text(f"{_ICON[line.status]} {line.name} ", style=_STYLE[line.status])
        text.append(line.status.lower())
        if line.attempt > 1:
            text.append(f" (attempt {line.attempt})")
        if line.status in ("SUCCEEDED", "FAILED") and line.duration_s is not None:
            text.append(f" in {line.duration_s:.2f}s")
        if line.input_tokens or line.output_tokens:
            text.append(f", {line.input_tokens + line.output_tokens} tokens")
        if line.cost:
            text.append(f", ${line.cost:.6f}")
        if line.note:
            text.append(f" — {line.note}")
        self.console.print(text)

    def _render(self) -> Group:
        table = Table(title=self.title, title_justify="left", expand=False, show_edge=False)
        table.add_column("step")
        table.add_column("status")
        table.add_column("try", justify="right")
        table.add_column("time", justify="right")
        table.add_column("tokens", justify="right")
        table.add_column("cost", justify="right")
        table.add_column("", overflow="ellipsis", max_width=60)
        now = time.monotonic()
        for line in self.lines.values():
            duration = line.duration_s
            if line.status == "RUNNING" and line.started is not None:
                duration = now - line.started
            table.add_row(
                Text(line.name),
                Text(f"{_ICON[line.status]} {line.status.lower()}", style=_STYLE[line.status]),
                str(line.attempt) if line.attempt else "",
                f"{duration:.2f}s" if duration is not None else "",
                str(line.input_tokens + line.output_tokens)
                if line.input_tokens or line.output_tokens
                else "",
                f"${line.cost:.4f}" if line.cost else "",
                Text(line.note, style="dim"),
            )
        return Group(table)

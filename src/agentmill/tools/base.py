"""What a tool is: a name, a JSON Schema for its arguments, and an async ``run``.

Tools are what agents call. The agent loop validates a call's arguments against the tool's
schema before running it, runs several calls of one turn in parallel, and sends each result (or
error) back to the model. A tool never raises for a failure the model should hear about: it
returns ``ToolResult(is_error=True)`` with a message the model can act on. Exceptions are for
bugs and for refusing to run at all (``ToolUnavailable``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentmill.errors import AgentMillError

if TYPE_CHECKING:
    from agentmill.artifacts import ArtifactStore
    from agentmill.gateway import CallContext, Gateway
    from agentmill.gateway.types import CallReport
    from agentmill.store.db import Database


class ToolUnavailable(AgentMillError):
    """The tool cannot run here at all (e.g. no sandbox); the message says why."""


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Where a call comes from. ``scratch`` is a private directory the tool may write in."""

    workspace_id: str | None = None
    run_id: str | None = None
    step_key: str | None = None
    scratch: Path | None = None
    # Per-workspace settings a tool reads (e.g. http_request's egress allowlist).
    settings: Mapping[str, Any] = field(default_factory=dict)
    # The engine's services, for tools that keep or look up data (memory_store, memory_search);
    # None where a tool runs outside a step.
    db: Database | None = None
    gateway: Gateway | None = None
    # Who a tool's own model calls (embeddings) are made for, and where the step records them
    # (with its result, like the agent's own calls).
    call_context: CallContext | None = None
    sink: Callable[[CallReport], None] | None = None
    # Where the run's files go (artifact_* tools, the python tool's artifacts/ folder).
    artifacts: ArtifactStore | None = None


@dataclass(frozen=True, kw_only=True)
class ToolResult:
    """What goes back to the model: text or a JSON value, and whether it is an error."""

    content: Any
    is_error: bool = False
    # For the audit log: a short summary when content is large.
    size: int = 0


class Tool(Protocol):
    name: str
    description: str
    parameters: Mapping[str, Any]  # JSON Schema of the arguments object

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult: ...

"""Another agent of the workflow as a tool (``tools: [agent:<name>]``): a supervisor delegates.

Calling the tool runs the named agent's whole tool loop (its own system prompt, model, tools and
``max_turns``) inside the supervisor's step, and its final answer is the tool's result. Its model
calls count with the step's; when it cannot answer, the supervisor hears why as a tool error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agentmill.domain.templates import TemplateError
from agentmill.domain.validation import AGENT_PREFIX
from agentmill.errors import BudgetExceeded, ConfigError, StepError
from agentmill.tools.base import ToolContext, ToolResult

_DESCRIPTION_CHARS = 400  # of the delegate's system prompt, shown to the supervisor

# Runs agent ``name`` on ``prompt`` to its final answer (the agent loop, given by agent.py).
RunAgent = Callable[[str, str], Awaitable[Any]]


def is_agent_ref(name: str) -> bool:
    """Whether an agent's tool name refers to another agent (``agent:<name>``)."""
    return name.startswith(AGENT_PREFIX)


class DelegateTool:
    """The tool through which a supervisor hands a task to agent ``agent``."""

    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "task": {"type": "string", "minLength": 1, "description": "What the agent should do."},
            "context": {
                "type": "string",
                "description": "Anything the agent needs to know that the task does not say.",
            },
        },
        "required": ["task"],
        "additionalProperties": False,
    }

    def __init__(self, agent: str, system: str, run: RunAgent) -> None:
        """``system`` is the agent's rendered system prompt: it tells the supervisor what the
        agent is for."""
        self.name = agent
        self.agent = agent
        about = " ".join(system.split())
        if len(about) > _DESCRIPTION_CHARS:
            about = about[: _DESCRIPTION_CHARS - 3] + "..."
        self.description = (
            f"Delegate a task to the agent {agent!r}; it answers with its result."
            + (f" Its instructions: {about}" if about else "")
        )
        self._run = run

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        prompt = str(arguments["task"])
        if arguments.get("context"):
            prompt += f"\n\nContext:\n{arguments['context']}"
        try:
            answer = await self._run(self.agent, prompt)
        except BudgetExceeded:
            raise  # a budget ends the run; the supervisor could not act on it
        except (StepError, ConfigError, TemplateError) as exc:
            return ToolResult(content=f"agent {self.agent!r} failed: {exc}", is_error=True)
        return ToolResult(content=answer)

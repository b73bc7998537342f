"""Step kinds. Each module implements one :class:`NodeExecutor`; ``NODES`` registers them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agentmill.engine.context import StepContext
from agentmill.engine.nodes.agent import run_agent
from agentmill.engine.nodes.human import run_human
from agentmill.engine.nodes.llm import run_llm
from agentmill.engine.nodes.map import run_map
from agentmill.engine.nodes.template import run_template
from agentmill.engine.nodes.workflow import run_workflow
from agentmill.engine.outcomes import Outcome

NodeExecutor = Callable[[StepContext], Awaitable[Outcome]]

NODES: dict[str, NodeExecutor] = {
    "llm": run_llm,
    "agent": run_agent,
    "template": run_template,
    "human": run_human,
    "map": run_map,
    "workflow": run_workflow,
}

__all__ = ["NODES", "NodeExecutor"]

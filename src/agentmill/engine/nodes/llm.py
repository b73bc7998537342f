"""``llm``: one completion."""

from __future__ import annotations

from typing import Any

from agentmill.domain.spec import AgentSpec, LlmStep, MapLlm
from agentmill.engine.context import StepContext
from agentmill.engine.nodes._output import parse_output
from agentmill.engine.outcomes import Outcome, Succeeded
from agentmill.gateway import ChatRequest, Message


async def run_llm(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, LlmStep | MapLlm)
    agent = ctx.agent(step.agent) if step.agent else None
    model = step.model or (agent.model if agent else "")
    system = step.system if step.system is not None else (agent.system if agent else None)
    messages = []
    if system:
        messages.append(Message(role="system", content=str(ctx.render(system))))
    messages.append(Message(role="user", content=str(ctx.render(step.prompt))))
    request = ChatRequest(
        model=model,
        messages=tuple(messages),
        temperature=_first(step.temperature, agent.temperature if agent else None),
        max_tokens=_first(step.max_tokens, agent.max_tokens if agent else None),
        response_schema=step.output_schema,
        fallbacks=tuple(agent.fallbacks) if agent and not step.model else (),
        options=_options(agent, step.options),
        context=ctx.call_context(turn=0, agent=step.agent),
    )
    response = await ctx.chat(request)
    return Succeeded(output=parse_output(response.content, step.output_schema))


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _options(agent: AgentSpec | None, own: dict[str, Any]) -> dict[str, Any]:
    return {**(agent.options if agent else {}), **own}

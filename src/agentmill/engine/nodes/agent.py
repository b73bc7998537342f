"""``agent``: a named agent's loop. The model answers, or asks for tools; tool results go back
to it until it answers or ``max_turns`` runs out. (Tools themselves arrive in a later version.)"""

from __future__ import annotations

from agentmill.domain.spec import AgentStep, MapAgent
from agentmill.engine.context import StepContext
from agentmill.engine.nodes._output import parse_output
from agentmill.engine.outcomes import Outcome, Succeeded
from agentmill.errors import StepFailed
from agentmill.gateway import ChatRequest, Message


async def run_agent(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, AgentStep | MapAgent)
    agent = ctx.agent(step.agent)
    messages: list[Message] = []
    if agent.system:
        messages.append(Message(role="system", content=str(ctx.render(agent.system))))
    messages.append(Message(role="user", content=str(ctx.render(step.prompt))))
    for turn in range(agent.max_turns):
        response = await ctx.chat(
            ChatRequest(
                model=agent.model,
                messages=tuple(messages),
                temperature=agent.temperature,
                max_tokens=agent.max_tokens,
                response_schema=step.output_schema,
                fallbacks=tuple(agent.fallbacks),
                options=agent.options,
                context=ctx.call_context(turn=turn, agent=step.agent),
            )
        )
        if not response.tool_calls:
            return Succeeded(output=parse_output(response.content, step.output_schema))
        messages.append(
            Message(role="assistant", content=response.content, tool_calls=response.tool_calls)
        )
        for call in response.tool_calls:
            raise StepFailed(
                f"agent {step.agent!r} asked for tool {call.name!r}, but no tools are available"
            )
    raise StepFailed(
        f"agent {step.agent!r} gave no final answer within max_turns={agent.max_turns}"
    )

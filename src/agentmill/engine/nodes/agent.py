"""``agent``: a named agent's tool loop.

The model gets the conversation and the agent's tools. When it asks for tools, every call of the
turn runs (in parallel), and each result, or error, goes back to it; this repeats until it
answers or ``max_turns`` runs out (a clear failure, not a hang). An answer that misses the
step's ``output_schema`` gets one repair turn. Every tool call is audited in the run's events,
with the agent that made it: an agent may delegate to others (``agent:<name>``, see
:mod:`._delegate`), whose loops run inside the same step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

from agentmill.domain.spec import AgentSpec, AgentStep, MapAgent
from agentmill.domain.validation import AGENT_PREFIX
from agentmill.engine.context import StepContext
from agentmill.engine.live import TOOL
from agentmill.engine.nodes._delegate import DelegateTool, is_agent_ref
from agentmill.engine.nodes._output import parse_output
from agentmill.engine.outcomes import LogLine, Outcome, Succeeded
from agentmill.errors import BudgetExceeded, ConfigError, RetryableError, StepFailed
from agentmill.gateway import ChatRequest, Message, ToolCall, ToolSpec
from agentmill.tools.base import Tool, ToolContext, ToolResult, ToolUnavailable
from agentmill.tools.mcp import is_mcp_ref, mcp_tools

_RESULT_LIMIT = 64_000  # characters of one tool result sent back to the model
_PREVIEW_LIMIT = 1000  # characters of a call's arguments in its live notice


async def run_agent(ctx: StepContext) -> Outcome:
    step = ctx.step
    assert isinstance(step, AgentStep | MapAgent)
    prompt = str(ctx.render(step.prompt))
    return Succeeded(output=await run_agent_loop(ctx, step.agent, prompt, step.output_schema))


async def run_agent_loop(
    ctx: StepContext,
    name: str,
    prompt: str,
    output_schema: dict[str, Any] | None = None,
) -> Any:
    """Agent ``name``'s tool loop on ``prompt``, to its final answer (checked against
    ``output_schema``). The step's own agent runs it, and so does every agent it delegates to."""
    agent = ctx.agent(name)
    # MCP sessions live as long as the loop: opened here, closed however the loop ends.
    async with AsyncExitStack() as stack:
        try:
            tools = {tool.name: tool for tool in await _resolve_tools(ctx, agent, stack)}
        except (ConfigError, ToolUnavailable) as exc:
            raise StepFailed(f"agent {name!r}: {exc}") from None
        return await _loop(ctx, name, agent, prompt, output_schema, tools)


async def _resolve_tools(ctx: StepContext, agent: AgentSpec, stack: AsyncExitStack) -> list[Tool]:
    """The agent's tools: registered, built-in and custom ones, the agents it may delegate to,
    then its MCP servers' tools."""
    tools: list[Tool] = []
    for name in agent.tools:
        if is_agent_ref(name):
            target = name.removeprefix(AGENT_PREFIX)
            system = ctx.agent(target).system
            about = str(ctx.render(system)) if system else ""
            tools.append(DelegateTool(target, about, partial(run_agent_loop, ctx)))
        elif not is_mcp_ref(name):
            tools.append(ctx.tools.resolve(name))
    refs = [name for name in agent.tools if is_mcp_ref(name)]
    if refs:
        servers = ctx.compiled.spec.mcp_servers
        tools += await stack.enter_async_context(
            mcp_tools(refs, servers, ctx.tools.settings_for("mcp"))
        )
    return tools


async def _loop(
    ctx: StepContext,
    name: str,
    agent: AgentSpec,
    prompt: str,
    schema: dict[str, Any] | None,
    tools: Mapping[str, Tool],
) -> Any:
    specs = tuple(
        ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
        for t in tools.values()
    )
    messages: list[Message] = []
    if agent.system:
        messages.append(Message(role="system", content=str(ctx.render(agent.system))))
    messages.append(Message(role="user", content=prompt))
    repaired = False
    for turn in range(agent.max_turns):
        response = await ctx.chat(
            ChatRequest(
                model=agent.model,
                messages=tuple(messages),
                temperature=agent.temperature,
                max_tokens=agent.max_tokens,
                tools=specs,
                response_schema=schema,
                fallbacks=tuple(agent.fallbacks),
                options=agent.options,
                context=ctx.call_context(turn=turn, agent=name),
            )
        )
        messages.append(
            Message(role="assistant", content=response.content, tool_calls=response.tool_calls)
        )
        if not response.tool_calls:
            try:
                return parse_output(response.content, schema)
            except RetryableError as exc:
                if repaired or schema is None:
                    raise
                repaired = True  # one repair turn: say what was wrong, ask again
                messages.append(Message(role="user", content=_repair_prompt(str(exc))))
                continue
        audits: list[list[LogLine]] = [[] for _ in response.tool_calls]
        try:
            results = await asyncio.gather(
                *(
                    _call_tool(ctx, name, tools, call, turn, audit)
                    for call, audit in zip(response.tool_calls, audits, strict=True)
                )
            )
        finally:  # in the order the model asked for the calls, whichever finished first
            for audit in audits:
                ctx.logs.extend(audit)
        messages.extend(
            Message(role="tool", content=text, tool_call_id=call.id, name=call.name)
            for call, text in zip(response.tool_calls, results, strict=True)
        )
    raise StepFailed(f"agent {name!r} gave no final answer within max_turns={agent.max_turns}")


def _repair_prompt(problem: str) -> str:
    return (
        f"Your answer cannot be used: {problem}. Answer again with only the JSON value that "
        "matches the required schema, nothing else."
    )


async def _call_tool(
    ctx: StepContext,
    agent: str,
    tools: Mapping[str, Tool],
    call: ToolCall,
    turn: int,
    audit: list[LogLine],
) -> str:
    """Run one call of ``agent`` and return what the model is told; audit it either way (live
    followers hear of it as it starts and ends; the line added to ``audit`` is stored with the
    step's result)."""
    started = time.perf_counter()
    about: dict[str, Any] = {
        "source": "step",
        "agent": agent,
        "tool": call.name,
        "call_id": call.id,
        "turn": turn,
    }
    await ctx.notify(TOOL, phase="start", arguments=_preview(call.arguments_json), **about)
    result = await _result(ctx, agent, tools, call, turn)
    text = _as_text(result)
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    outcome = "error" if result.is_error else "ok"
    await ctx.notify(
        TOOL,
        level="warning" if result.is_error else "info",
        phase="end",
        outcome=outcome,
        duration_ms=duration_ms,
        **about,
    )
    audit.append(
        LogLine(
            message=f"tool {call.name}: {outcome}",
            level="warning" if result.is_error else "info",
            data={
                "topic": "tool",
                "agent": agent,
                "tool": call.name,
                "call_id": call.id,
                "turn": turn,
                "arguments": dict(call.arguments),
                "duration_ms": duration_ms,
                "result_size": len(text),
                "outcome": outcome,
                "error": text[:500] if result.is_error else None,
            },
        )
    )
    if len(text) > _RESULT_LIMIT:
        text = text[:_RESULT_LIMIT] + f"\n[truncated: {len(text)} characters in all]"
    return f"error: {text}" if result.is_error else text


async def _result(
    ctx: StepContext, agent: str, tools: Mapping[str, Tool], call: ToolCall, turn: int
) -> ToolResult:
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return ToolResult(content=f"unknown tool {call.name!r} (available: {known})", is_error=True)
    if "_raw" in call.arguments:
        return ToolResult(
            content=f"arguments are not a JSON object: {call.arguments['_raw'][:200]!r}",
            is_error=True,
        )
    import jsonschema  # only agents that call tools check arguments; not loaded at start

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(tool.parameters).iter_errors(dict(call.arguments))
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
        return ToolResult(content=f"invalid arguments at {where}: {error.message}", is_error=True)
    workspace_id = ctx.claim.caller.workspace_id
    context = ToolContext(
        workspace_id=workspace_id,
        run_id=ctx.claim.run_id,
        step_key=ctx.claim.step_key,
        settings=await ctx.tools.settings_for_call(call.name, workspace_id),
        db=ctx.db,
        gateway=ctx.gateway,
        call_context=ctx.call_context(turn=turn, agent=agent),
        sink=ctx.calls.append,
        artifacts=ctx.artifacts,
    )
    try:
        return await tool.run(call.arguments, context)
    except BudgetExceeded:
        raise  # a budget ends the run; the model cannot act on it
    except Exception as exc:  # a tool's failure is the model's information, not a crash
        return ToolResult(content=f"{type(exc).__name__}: {exc}", is_error=True)


def _as_text(result: ToolResult) -> str:
    content: Any = result.content
    if isinstance(content, str):
        return content
    try:
        return json.dumps(content, default=str)
    except (TypeError, ValueError):
        return str(content)


def _preview(text: str) -> str:
    return text if len(text) <= _PREVIEW_LIMIT else text[: _PREVIEW_LIMIT - 1] + "…"

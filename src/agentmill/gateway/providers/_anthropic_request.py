"""A normalized chat request as the keyword arguments of the SDK's ``messages.create``.

- ``system`` messages become the top-level ``system`` (joined by blank lines, wherever they were);
- an assistant message's ``tool_calls`` become ``tool_use`` blocks after its text;
- ``tool`` messages become ``tool_result`` blocks of a user message; consecutive messages of one
  role are merged into one message (the API wants every result of a turn in the user message
  that follows it, results before any text);
- ``max_tokens`` is required by Anthropic: :data:`DEFAULT_MAX_TOKENS` when the request has none
  (plus the thinking budget when extended thinking has one, since thinking counts against it);
- ``response_schema`` uses Anthropic's structured outputs (``output_config.format`` of type
  ``json_schema``, constrained decoding on Claude 4.5 and later): the answer is JSON text that
  matches the schema. The schema is first made strict with the SDK's ``transform_schema``
  (``additionalProperties: false``; constraints the API cannot enforce move into descriptions),
  so callers should still validate the answer against their own schema. Unlike a forced tool,
  this works together with the request's own tools and with extended thinking;
- ``temperature`` and ``top_p`` are sent only when the request sets them: the SDK no longer
  types them, and Claude Opus 4.7 and later answer 400 to them;
- options that are Messages API parameters are passed through (:data:`PASSED_OPTIONS`);
  ``parallel_tool_calls: false`` becomes ``tool_choice.disable_parallel_tool_use``. Other
  options are ignored, since options follow a request through failover to other providers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

from anthropic import Omit, omit, transform_schema
from anthropic.types import (
    MessageParam,
    TextBlockParam,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)

from agentmill.errors import StepFailed
from agentmill.gateway.types import ChatRequest, Message

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent when a request has none (Anthropic requires one)."""

PASSED_OPTIONS = frozenset(
    {
        "thinking",
        "metadata",
        "top_k",
        "service_tier",
        "output_config",
        "cache_control",
        "container",
        "inference_geo",
        "speed",
    }
)
"""Request options sent to Anthropic as Messages API parameters of the same name."""

Block = TextBlockParam | ToolUseBlockParam | ToolResultBlockParam


class MessagesParams(TypedDict):
    """The keyword arguments of ``messages.create`` that a request sets."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | Omit
    stop_sequences: list[str] | Omit
    tools: list[ToolParam] | Omit
    tool_choice: ToolChoiceParam | Omit
    extra_body: dict[str, object] | None


def messages_params(request: ChatRequest) -> MessagesParams:
    """Keyword arguments of ``messages.create`` for a request."""
    options = request.options
    extra: dict[str, object] = {key: options[key] for key in PASSED_OPTIONS if key in options}
    if request.temperature is not None:
        extra["temperature"] = request.temperature
    if request.top_p is not None:
        extra["top_p"] = request.top_p
    if request.response_schema is not None:
        extra["output_config"] = {
            **dict(options.get("output_config") or {}),
            "format": {"type": "json_schema", "schema": _strict(request.response_schema)},
        }
    system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
    return {
        "model": request.model_name,
        "max_tokens": request.max_tokens or _default_max_tokens(options),
        "messages": _messages(request),
        "system": system or omit,
        "stop_sequences": list(request.stop) or omit,
        "tools": [_tool(spec.name, spec.description, spec.parameters) for spec in request.tools]
        or omit,
        "tool_choice": _tool_choice(request) or omit,
        # Untyped on purpose: the SDK warns about some of these per model, or no longer types them.
        "extra_body": extra or None,
    }


def _messages(request: ChatRequest) -> list[MessageParam]:
    turns: list[tuple[Literal["user", "assistant"], list[Block]]] = []
    for message in request.messages:
        if message.role == "system":
            continue
        role: Literal["user", "assistant"] = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(request, message)
        if not blocks:
            continue  # the API refuses empty messages and empty text blocks
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    messages: list[MessageParam] = []
    for role, blocks in turns:
        if role == "assistant":
            messages.append({"role": "assistant", "content": blocks})
        else:
            # Tool results must open the user message that answers a tool use (stable sort).
            blocks.sort(key=lambda block: block["type"] != "tool_result")
            messages.append({"role": "user", "content": blocks})
    return messages


def _blocks(request: ChatRequest, message: Message) -> list[Block]:
    if message.role == "tool":
        if not message.tool_call_id:
            raise StepFailed(f"{request.model}: a tool message needs the tool_call_id it answers")
        result: ToolResultBlockParam = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": message.content,
        }
        return [result]
    blocks: list[Block] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": dict(call.arguments)}
        )
    return blocks


def _tool(name: str, description: str, parameters: Mapping[str, Any]) -> ToolParam:
    tool: ToolParam = {"name": name, "input_schema": {"type": "object", **parameters}}
    if description:
        tool["description"] = description
    return tool


def _tool_choice(request: ChatRequest) -> ToolChoiceParam | None:
    if not request.tools:
        return None  # Anthropic refuses a tool_choice without tools
    choice = request.tool_choice or "auto"
    parallel = request.options.get("parallel_tool_calls")
    if choice == "none":
        return {"type": "none"}
    tool_choice: ToolChoiceParam
    if choice == "auto":
        if parallel is not False:
            return None  # Anthropic's default
        tool_choice = {"type": "auto"}
    elif choice in ("required", "any"):
        tool_choice = {"type": "any"}
    else:
        tool_choice = {"type": "tool", "name": choice}
    if parallel is False:
        tool_choice["disable_parallel_tool_use"] = True
    return tool_choice


def _strict(schema: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return transform_schema(dict(schema))
    except ValueError:  # a schema it cannot make strict (no type): let Anthropic judge it
        return dict(schema)


def _default_max_tokens(options: Mapping[str, Any]) -> int:
    # With extended thinking the thinking budget counts against max_tokens, so leave room.
    thinking = options.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, Mapping) else None
    return DEFAULT_MAX_TOKENS + budget if isinstance(budget, int) else DEFAULT_MAX_TOKENS

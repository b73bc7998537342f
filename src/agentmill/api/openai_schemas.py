"""OpenAI's request bodies for ``/v1/chat/completions`` and ``/v1/embeddings``, read into the
gateway's normalized :class:`ChatRequest` and :class:`EmbedRequest`.

Parameters the gateway has no use for but which cannot change an answer's meaning (``user``,
``metadata``, ``seed``, ``n: 1``...) are accepted and dropped; parameters it cannot honour
(``n: 2``, ``logprobs``, audio, legacy ``functions``...) are refused with a 400 naming them, and
anything else is an unknown parameter, as on OpenAI. Provider-specific extras travel in an
AgentMill extension field, ``"agentmill": {"options": {...}, "fallbacks": [...]}`` (with an
OpenAI SDK: ``extra_body={"agentmill": {...}}``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from agentmill.api.openai_errors import InvalidParam
from agentmill.gateway.types import (
    CallContext,
    ChatRequest,
    EmbedRequest,
    Message,
    ToolCall,
    ToolSpec,
    parse_arguments,
)

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit, kept so clients see the same behaviour here


def _one_of(expected: str) -> WrapValidator:
    """A union's error names the field once ("expected a string or ..."), not once per member
    with Pydantic's internal member names in the path."""

    def validate(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_type", f"expected {expected}") from None

    return WrapValidator(validate)


class _Strict(BaseModel):
    """Unknown keys are refused, as OpenAI refuses unrecognized request arguments."""

    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    """Unknown keys are ignored: clients send back the assistant messages they received, with
    fields like ``refusal``, ``annotations`` or ``audio: null`` that mean nothing here."""

    model_config = ConfigDict(extra="ignore")


Content = Annotated[
    str | list[dict[str, Any]] | None, _one_of("a string or an array of content parts")
]
Stop = Annotated[str | list[str] | None, _one_of("a string or an array of strings")]


class FunctionCallIn(_Lenient):
    name: str
    arguments: str = ""  # JSON text, as OpenAI sends it


class ToolCallIn(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class MessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # OpenAI's structured outputs flag; providers check schemas anyway


class ToolIn(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Annotated[
    Literal["none", "auto", "required"] | NamedToolChoice | None,
    _one_of("'none', 'auto', 'required' or a named function object"),
]


class JsonSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class AgentMillExtension(_Strict):
    """AgentMill's own request fields, sent in the body as ``"agentmill"``."""

    options: dict[str, Any] = Field(default_factory=dict)  # passed to the provider as is
    fallbacks: list[str] = Field(default_factory=list)  # provider/model names, tried in order


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``; model names are AgentMill's ``provider/model``."""

    model: str = Field(min_length=1)
    messages: list[MessageIn] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: Stop = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoice = None
    response_format: ResponseFormat | None = None
    agentmill: AgentMillExtension | None = None
    # Accepted only at their neutral value (checked in chat_request).
    n: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    modalities: list[str] | None = None
    # Accepted and dropped: hints that do not change what an answer means.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    seed: int | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # OpenAI parameters the gateway does not support: any value is refused.
    audio: Any = None
    functions: Any = None
    function_call: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None


_UNSUPPORTED = (
    "audio",
    "functions",
    "function_call",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "verbosity",
    "moderation",
    "prompt_cache_options",
)


class EmbeddingRequest(_Strict):
    """``POST /v1/embeddings``."""

    model: str = Field(min_length=1)
    input: Annotated[str | list[Any], _one_of("a string or an array of strings")]
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    agentmill: AgentMillExtension | None = None


def chat_request(body: ChatCompletionRequest, context: CallContext) -> ChatRequest:
    """The gateway's request for an OpenAI chat completion request; InvalidParam if the
    gateway cannot do what it asks."""
    _refuse_unsupported(body)
    tools = tuple(
        ToolSpec(
            name=tool.function.name,
            description=tool.function.description,
            parameters=tool.function.parameters or {"type": "object", "properties": {}},
        )
        for tool in body.tools or ()
    )
    extension = body.agentmill or AgentMillExtension()
    return ChatRequest(
        model=body.model,
        messages=_messages(body.messages),
        temperature=body.temperature,
        top_p=body.top_p,
        # OpenAI deprecated max_tokens for max_completion_tokens; either may come.
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        response_schema=_response_schema(body.response_format),
        fallbacks=tuple(extension.fallbacks),
        options=extension.options,
        context=context,
    )


def embed_request(body: EmbeddingRequest, context: CallContext) -> EmbedRequest:
    """The gateway's request for an OpenAI embeddings request (text inputs only)."""
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise InvalidParam("'input' must not be an empty array", param="input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidParam(
            f"'input' has {len(inputs)} items; at most {MAX_EMBEDDING_INPUTS} are allowed",
            param="input",
        )
    for i, text in enumerate(inputs):
        if isinstance(text, int | list):
            raise InvalidParam(
                "token arrays are not supported by the AgentMill gateway (its providers "
                "tokenize differently); send the text",
                param="input" if isinstance(text, int) else f"input[{i}]",
                code="unsupported_value",
            )
        if not isinstance(text, str):
            raise InvalidParam("expected a string", param=f"input[{i}]", code="invalid_type")
        if not text:
            raise InvalidParam("an input must not be an empty string", param=f"input[{i}]")
    options = body.agentmill.options if body.agentmill else {}
    return EmbedRequest(
        model=body.model,
        inputs=tuple(inputs),
        dimensions=body.dimensions,
        options=options,
        context=context,
    )


def _refuse_unsupported(body: ChatCompletionRequest) -> None:
    for name in _UNSUPPORTED:
        if getattr(body, name) is not None:
            hint = (
                "; pass provider-specific parameters in agentmill.options"
                if name in ("reasoning_effort", "verbosity")
                else ""
            )
            raise InvalidParam(
                f"{name!r} is not supported by the AgentMill gateway{hint}",
                param=name,
                code="unsupported_parameter",
            )
    if body.n not in (None, 1):
        raise InvalidParam(
            f"n={body.n} is not supported: the AgentMill gateway answers with one choice",
            param="n",
            code="unsupported_value",
        )
    neutral: dict[str, Any] = {
        "logprobs": body.logprobs in (None, False),
        "top_logprobs": body.top_logprobs in (None, 0),
        "presence_penalty": body.presence_penalty in (None, 0),
        "frequency_penalty": body.frequency_penalty in (None, 0),
        "logit_bias": not body.logit_bias,
        "modalities": body.modalities in (None, ["text"]),
    }
    for name, ok in neutral.items():
        if not ok:
            raise InvalidParam(
                f"{name!r} is not supported by the AgentMill gateway",
                param=name,
                code="unsupported_value",
            )


def _messages(messages: list[MessageIn]) -> tuple[Message, ...]:
    tool_names: dict[str, str] = {}  # tool call id -> tool name, for results (Gemini wants it)
    out: list[Message] = []
    for i, message in enumerate(messages):
        content = _text(message.content, f"messages[{i}].content")
        if message.tool_calls and message.role != "assistant":
            raise InvalidParam(
                f"only assistant messages carry tool_calls, not {message.role!r} ones",
                param=f"messages[{i}].tool_calls",
            )
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidParam(
                    "a tool message needs the tool_call_id of the call it answers",
                    param=f"messages[{i}].tool_call_id",
                    code="missing_required_parameter",
                )
            name = tool_names.get(message.tool_call_id) or message.name
            out.append(
                Message(role="tool", content=content, tool_call_id=message.tool_call_id, name=name)
            )
            continue
        calls = tuple(
            ToolCall(
                id=call.id,
                name=call.function.name,
                arguments=parse_arguments(call.function.arguments, call.function.name),
            )
            for call in message.tool_calls or ()
        )
        tool_names.update((call.id, call.name) for call in calls)
        role = "system" if message.role == "developer" else message.role
        out.append(Message(role=role, content=content, tool_calls=calls))
    return tuple(out)


def _text(content: str | list[dict[str, Any]] | None, param: str) -> str:
    """A message's text; an array of text parts is joined by newlines (the gateway's messages
    are text: images, audio and files are refused by name rather than dropped)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind not in ("text", "refusal"):
            raise InvalidParam(
                f"content part type {kind!r} is not supported by the AgentMill gateway (text only)",
                param=f"{param}[{j}].type",
                code="unsupported_value",
            )
        text = part.get(kind)
        if not isinstance(text, str):
            raise InvalidParam(
                f"a {kind!r} content part needs a string {kind!r}",
                param=f"{param}[{j}].{kind}",
                code="invalid_type",
            )
        texts.append(text)
    return "\n".join(texts)


def _tool_choice(choice: str | NamedToolChoice | None, tools: tuple[ToolSpec, ...]) -> str | None:
    if choice is None:
        return None
    if choice in ("none", "auto"):
        return str(choice)
    if not tools:
        raise InvalidParam(
            "tool_choice names a tool or requires one, but no tools were given",
            param="tool_choice",
        )
    if isinstance(choice, str):
        return choice  # "required"
    name = choice.function.name
    if name not in {tool.name for tool in tools}:
        raise InvalidParam(
            f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
        )
    return name


def _response_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.json_schema is None:
        raise InvalidParam(
            "response_format of type 'json_schema' needs a json_schema",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    return response_format.json_schema.schema_ or {"type": "object"}

"""The Anthropic provider against a local server speaking the Messages API's wire protocol."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

from agentmill.errors import RetryableError, StepFailed
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers import build_provider
from agentmill.gateway.providers._http import retry_after as _retry_after
from agentmill.gateway.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
)
from agentmill.gateway.types import (
    ChatDelta,
    ChatRequest,
    EmbedRequest,
    Message,
    StreamCollector,
    ToolCall,
    ToolSpec,
    Usage,
)
from tests.gateway.wire.anthropic_server import AnthropicFake, anthropic_server

KEY = "sk-ant-test-0123456789secret"
MODEL = "anthropic/claude-haiku-4-5"
WEATHER = ToolSpec(
    name="weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CLOCK = ToolSpec(name="clock")


def config(url: str, *, timeout: float = 5.0, key: str = KEY) -> ProviderConfig:
    return ProviderConfig(
        name="anthropic", kind="anthropic", base_url=url, api_key=key, timeout=timeout
    )


@pytest.fixture
def fake() -> Iterator[AnthropicFake]:
    with anthropic_server(KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: AnthropicFake) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(config(fake.url))
    yield provider
    await provider.aclose()


def ask(prompt: str = "Hello", **fields: Any) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=(Message(role="user", content=prompt),), **fields)


async def collect(
    provider: AnthropicProvider, request: ChatRequest, into: list[ChatDelta] | None = None
) -> list[ChatDelta]:
    """Every delta of a stream; ``into`` keeps those that came before a failure."""
    deltas = [] if into is None else into
    async for delta in provider.stream(request):
        deltas.append(delta)
    return deltas


# ---------------------------------------------------------------- the request


async def test_a_conversation_with_tool_results_becomes_one_messages_api_request(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    calls = (
        ToolCall(id="toolu_1", name="weather", arguments={"city": "Oslo"}),
        ToolCall(id="toolu_2", name="clock", arguments={}),
    )
    request = ChatRequest(
        model=MODEL,
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather and time in Oslo?"),
            Message(role="assistant", content="Let me look.", tool_calls=calls),
            Message(role="tool", content="12°C, rain", tool_call_id="toolu_1", name="weather"),
            Message(role="tool", content="14:05", tool_call_id="toolu_2", name="clock"),
            Message(role="system", content="Answer in English."),
            Message(role="user", content="Thanks!"),
        ),
        tools=(WEATHER, CLOCK),
    )

    response = await provider.chat(request)

    assert response.content == "echo: Thanks!"
    assert response.model == MODEL
    assert response.finish_reason == "stop"
    (sent,) = fake.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", sent.headers["anthropic-version"])
    assert sent.json() == {
        "model": "claude-haiku-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather and time in Oslo?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Oslo"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12°C, rain"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "14:05"},
                    {"type": "text", "text": "Thanks!"},
                ],
            },
        ],
        "tools": [
            {
                "name": "weather",
                "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ],
    }


async def test_an_assistant_turn_with_only_tool_calls_sends_no_empty_text_block(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    call = ToolCall(id="toolu_9", name="clock", arguments={})
    await provider.chat(
        ChatRequest(
            model=MODEL,
            messages=(
                Message(role="user", content="Time?"),
                Message(role="assistant", content="", tool_calls=(call,)),
                Message(role="tool", content="09:00", tool_call_id="toolu_9"),
            ),
            tools=(CLOCK,),
        )
    )
    assert fake.bodies[0]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_9", "name": "clock", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "09:00"}],
        },
    ]


async def test_tool_results_open_the_user_message_even_after_a_user_note(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    call = ToolCall(id="toolu_5", name="clock", arguments={})
    await provider.chat(
        ChatRequest(
            model=MODEL,
            messages=(
                Message(role="user", content="Time?"),
                Message(role="assistant", content="Checking.", tool_calls=(call,)),
                Message(role="user", content="(3 turns left)"),
                Message(role="tool", content="09:00", tool_call_id="toolu_5"),
            ),
            tools=(CLOCK,),
        )
    )
    assert fake.bodies[0]["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_5", "content": "09:00"},
            {"type": "text", "text": "(3 turns left)"},
        ],
    }


async def test_sampling_stop_sequences_and_anthropic_options_are_sent(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    await provider.chat(
        ask(
            temperature=0.2,
            top_p=0.9,
            max_tokens=300,
            stop=("END",),
            options={
                "top_k": 40,
                "metadata": {"user_id": "u-1"},
                "service_tier": "standard_only",
                "reply": "a scripted provider's option",
                "fail_attempts": 2,
            },
        )
    )
    body = fake.bodies[0]
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["max_tokens"] == 300
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["service_tier"] == "standard_only"
    assert "reply" not in body
    assert "fail_attempts" not in body


async def test_unset_sampling_parameters_are_not_sent(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    # Claude Opus 4.7 and later answer 400 to temperature and top_p, so absent means absent.
    await provider.chat(ask())
    assert set(fake.bodies[0]) == {"model", "max_tokens", "messages"}


async def test_thinking_is_passed_and_the_default_max_tokens_leaves_room_for_its_budget(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply("42", thinking="Let me think about it.", thinking_tokens=7, output_tokens=12)
    thinking = {"type": "enabled", "budget_tokens": 2048}
    response = await provider.chat(ask(options={"thinking": thinking}))
    assert fake.bodies[0]["thinking"] == thinking
    assert fake.bodies[0]["max_tokens"] == DEFAULT_MAX_TOKENS + 2048
    assert response.content == "42"  # thinking is not part of the answer
    assert response.usage.reasoning_tokens == 7
    assert response.usage.output_tokens == 12


@pytest.mark.parametrize(
    ("tool_choice", "options", "expected"),
    [
        (None, {}, None),
        ("auto", {}, None),
        ("required", {}, {"type": "any"}),
        ("none", {}, {"type": "none"}),
        ("weather", {}, {"type": "tool", "name": "weather"}),
        (None, {"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            "required",
            {"parallel_tool_calls": False},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
    ],
)
async def test_tool_choice(
    fake: AnthropicFake,
    provider: AnthropicProvider,
    tool_choice: str | None,
    options: dict[str, Any],
    expected: dict[str, Any] | None,
) -> None:
    await provider.chat(ask(tools=(WEATHER,), tool_choice=tool_choice, options=options))
    assert fake.bodies[0].get("tool_choice") == expected


async def test_a_tool_choice_without_tools_is_not_sent(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    await provider.chat(ask(tool_choice="required"))
    assert "tool_choice" not in fake.bodies[0]
    assert "tools" not in fake.bodies[0]


async def test_a_response_schema_uses_structured_outputs_with_a_strict_schema(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply('{"sections": ["a", "b"]}')
    schema = {
        "type": "object",
        "properties": {"sections": {"type": "array", "items": {"type": "string"}}},
        "required": ["sections"],
    }
    response = await provider.chat(
        ask(response_schema=schema, options={"output_config": {"effort": "low"}})
    )
    assert response.content == '{"sections": ["a", "b"]}'
    assert fake.bodies[0]["output_config"] == {
        "effort": "low",
        "format": {
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {"sections": {"type": "array", "items": {"type": "string"}}},
                "required": ["sections"],
                "additionalProperties": False,
            },
        },
    }


async def test_a_tool_message_without_its_call_id_fails_before_calling(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    request = ChatRequest(model=MODEL, messages=(Message(role="tool", content="result"),))
    with pytest.raises(StepFailed, match="a tool message needs the tool_call_id"):
        await provider.chat(request)
    assert fake.requests == []


# ---------------------------------------------------------------- the answer


async def test_usage_counts_cache_reads_and_writes_as_input(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply(
        "cached",
        input_tokens=20,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=300,
        output_tokens=8,
    )
    response = await provider.chat(ask())
    assert response.usage == Usage(
        input_tokens=1320, output_tokens=8, cached_tokens=1000, cache_write_tokens=300
    )


async def test_tool_use_blocks_become_tool_calls(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply(
        "Checking.",
        tool_calls=[
            ("toolu_a", "weather", {"city": "Oslo"}),
            ("toolu_b", "clock", {}),
        ],
    )
    response = await provider.chat(ask(tools=(WEATHER, CLOCK)))
    assert response.content == "Checking."
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall(id="toolu_a", name="weather", arguments={"city": "Oslo"}),
        ToolCall(id="toolu_b", name="clock", arguments={}),
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reasons(
    fake: AnthropicFake, provider: AnthropicProvider, stop_reason: str, finish_reason: str
) -> None:
    fake.reply("partial", stop_reason=stop_reason)
    fake.reply("partial", stop_reason=stop_reason)
    assert (await provider.chat(ask(stop=("END",)))).finish_reason == finish_reason
    streamed = StreamCollector(MODEL)
    for delta in await collect(provider, ask()):
        streamed.add(delta)
    assert streamed.finish_reason == finish_reason


# ---------------------------------------------------------------- streaming


async def test_a_streamed_answer_arrives_in_pieces_then_finishes_with_usage(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply(
        "The quick brown fox jumps.",
        input_tokens=30,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=50,
        output_tokens=9,
    )
    deltas = await collect(provider, ask())

    assert fake.bodies[0]["stream"] is True
    texts = [d.text for d in deltas if d.text]
    assert len(texts) == 3
    assert "".join(texts) == "The quick brown fox jumps."
    assert deltas[-1] == ChatDelta(
        finish_reason="stop",
        usage=Usage(input_tokens=180, output_tokens=9, cached_tokens=100, cache_write_tokens=50),
    )
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_streamed_tool_calls_are_numbered_among_tool_calls_and_arrive_whole(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    # Content blocks 0 (thinking) and 1 (text) come first; the tool calls are blocks 2 and 3.
    fake.reply(
        "Let me check.",
        thinking="Two tools are needed.",
        tool_calls=[
            ("toolu_a", "weather", {"city": "Oslo", "units": "metric"}),
            ("toolu_b", "clock", {"zone": "Europe/Oslo"}),
        ],
    )
    deltas = await collect(provider, ask(tools=(WEATHER, CLOCK)))

    pieces = [piece for d in deltas for piece in d.tool_calls]
    assert {p.index for p in pieces} == {0, 1}
    firsts = [p for p in pieces if p.id]
    assert [(p.index, p.id, p.name) for p in firsts] == [
        (0, "toolu_a", "weather"),
        (1, "toolu_b", "clock"),
    ]
    assert len([p for p in pieces if p.index == 0 and p.arguments]) > 1  # split, joined below
    collector = StreamCollector(MODEL)
    for delta in deltas:
        collector.add(delta)
    response = collector.response()
    assert response.content == "Let me check."
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall(id="toolu_a", name="weather", arguments={"city": "Oslo", "units": "metric"}),
        ToolCall(id="toolu_b", name="clock", arguments={"zone": "Europe/Oslo"}),
    )


async def test_server_tools_anthropic_ran_itself_are_not_tool_calls(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    for _ in range(2):
        fake.reply(
            "Bees dance.", web_search="bee facts", tool_calls=[("toolu_s", "clock", {"tz": "UTC"})]
        )
    expected = (ToolCall(id="toolu_s", name="clock", arguments={"tz": "UTC"}),)
    called = await provider.chat(ask(tools=(CLOCK,)))
    deltas = await collect(provider, ask(tools=(CLOCK,)))
    collector = StreamCollector(MODEL)
    for delta in deltas:
        collector.add(delta)
    assert called.tool_calls == expected
    assert collector.response().tool_calls == expected
    assert {piece.index for d in deltas for piece in d.tool_calls} == {0}
    assert collector.response().content == called.content == "Bees dance."


async def test_a_stream_and_a_call_give_the_same_response(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    for _ in range(2):
        fake.reply("Sure.", tool_calls=[("toolu_x", "weather", {"city": "Rome"})], output_tokens=21)
    called = await provider.chat(ask(tools=(WEATHER,)))
    collector = StreamCollector(MODEL)
    for delta in await collect(provider, ask(tools=(WEATHER,))):
        collector.add(delta)
    streamed = collector.response()
    assert (streamed.content, streamed.tool_calls, streamed.finish_reason, streamed.usage) == (
        called.content,
        called.tool_calls,
        called.finish_reason,
        called.usage,
    )


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [500, 503, 529, 408, 409])
async def test_server_errors_are_retryable_and_not_retried_by_the_sdk(
    fake: AnthropicFake, provider: AnthropicProvider, status: int
) -> None:
    fake.server.fail(status, times=3)
    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())
    assert caught.value.status == status
    assert str(caught.value).startswith(f"{MODEL}: {status} ")
    assert str(caught.value).endswith(": injected failure")
    assert len(fake.requests) == 1


async def test_overloaded_is_named(fake: AnthropicFake, provider: AnthropicProvider) -> None:
    fake.server.fail(529)
    with pytest.raises(
        RetryableError, match=re.escape(f"{MODEL}: 529 Overloaded: injected failure")
    ):
        await provider.chat(ask())


async def test_a_rate_limit_says_when_to_retry(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.server.fail(429, retry_after=3)
    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())
    assert caught.value.retry_after == 3.0
    assert caught.value.status == 429
    assert str(caught.value) == (
        f"{MODEL}: 429 Too Many Requests: injected failure (retry after 3s)"
    )
    assert len(fake.requests) == 1


async def test_a_bad_request_fails_the_step_with_anthropics_message(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    # A tool use without its result: the fake refuses it as the API does.
    call = ToolCall(id="toolu_1", name="clock", arguments={})
    request = ChatRequest(
        model=MODEL,
        messages=(
            Message(role="user", content="Time?"),
            Message(role="assistant", content="", tool_calls=(call,)),
            Message(role="user", content="Never mind."),
        ),
        tools=(CLOCK,),
    )
    with pytest.raises(StepFailed) as caught:
        await provider.chat(request)
    assert caught.value.status == 400
    assert str(caught.value).startswith(
        f"{MODEL}: 400 Bad Request: messages.2: `tool_use` ids were found without `tool_result`"
    )
    assert len(fake.requests) == 1


async def test_a_wrong_key_fails_the_step_without_showing_the_key(fake: AnthropicFake) -> None:
    wrong = "sk-ant-wrong-key-do-not-print"
    provider = AnthropicProvider(config(fake.url, key=wrong))
    try:
        with pytest.raises(StepFailed) as caught:
            await provider.chat(ask())
        with pytest.raises(StepFailed) as streamed:
            await collect(provider, ask())
    finally:
        await provider.aclose()
    assert str(caught.value) == f"{MODEL}: 401 Unauthorized: invalid x-api-key"
    assert caught.value.status == 401
    assert streamed.value.status == 401
    for error in (caught.value, streamed.value):
        assert wrong not in str(error)
        assert wrong not in repr(error)
    assert len(fake.requests) == 2


async def test_a_dropped_connection_is_retryable(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.server.drop(times=3)
    with pytest.raises(RetryableError, match=re.escape(f"{MODEL}: connection failed")) as caught:
        await provider.chat(ask())
    assert caught.value.status is None
    assert len(fake.requests) == 1


async def test_a_timeout_is_retryable(fake: AnthropicFake) -> None:
    fake.server.slow(0.5)
    provider = AnthropicProvider(config(fake.url, timeout=0.1))
    try:
        with pytest.raises(RetryableError, match=re.escape(f"{MODEL}: timed out after 0.1s")):
            await provider.chat(ask())
    finally:
        await provider.aclose()
    assert len(fake.requests) == 1


async def test_a_stream_refused_up_front_is_classified_like_a_call(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.server.fail(503, retry_after=2)
    with pytest.raises(RetryableError) as caught:
        await collect(provider, ask())
    assert (caught.value.status, caught.value.retry_after) == (503, 2.0)
    assert len(fake.requests) == 1


async def test_an_error_event_mid_stream_is_retryable(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply("This answer will not finish.", stream_error="overloaded_error")
    received: list[ChatDelta] = []
    with pytest.raises(RetryableError) as caught:
        await collect(provider, ask(), into=received)
    assert str(caught.value) == f"{MODEL}: error in stream: overloaded_error: Overloaded"
    assert caught.value.status == 529
    # What came before the error arrived first; the stream then failed, without a finish.
    assert len(received) == 1
    assert received[0].text
    assert "This answer will not finish.".startswith(received[0].text)
    assert received[0].finish_reason is None
    assert len(fake.requests) == 1


async def test_a_connection_lost_mid_stream_is_retryable(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.server.drop_mid_stream()
    with pytest.raises(RetryableError, match=re.escape(f"{MODEL}: connection lost mid-stream")):
        await collect(provider, ask())
    assert len(fake.requests) == 1


async def test_a_stream_that_ends_before_message_stop_is_retryable(
    fake: AnthropicFake, provider: AnthropicProvider
) -> None:
    fake.reply("This answer stops short.", stream_cut=True)
    with pytest.raises(
        RetryableError, match=re.escape(f"{MODEL}: the stream ended before message_stop")
    ):
        await collect(provider, ask())


# ---------------------------------------------------------------- the rest


async def test_embeddings_are_refused_clearly(
    provider: AnthropicProvider, fake: AnthropicFake
) -> None:
    request = EmbedRequest(model="anthropic/claude-haiku-4-5", inputs=("bees",))
    with pytest.raises(StepFailed, match="Anthropic has no embeddings API"):
        await provider.embed(request)
    assert fake.requests == []


async def test_the_registry_builds_it_from_its_config(fake: AnthropicFake) -> None:
    provider = build_provider(config(fake.url))
    try:
        assert isinstance(provider, AnthropicProvider)
        assert provider.name == "anthropic"
        assert (await provider.chat(ask("hi"))).content == "echo: hi"
    finally:
        await provider.aclose()


async def test_configured_headers_are_sent(fake: AnthropicFake) -> None:
    settings = ProviderConfig(
        name="claude",
        kind="anthropic",
        base_url=fake.url,
        api_key=KEY,
        headers={"anthropic-beta": "context-1m-2025-08-07"},
    )
    provider = AnthropicProvider(settings)
    try:
        await provider.chat(ChatRequest(model="claude/claude-haiku-4-5", messages=ask().messages))
    finally:
        await provider.aclose()
    assert fake.requests[0].headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert fake.bodies[0]["model"] == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),  # a past date: now
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    assert _retry_after(httpx2.Headers(headers)) == expected

"""The OpenAI provider against a fake server speaking OpenAI's wire protocol."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import openai
import pytest

from agentmill.errors import ConfigError, RetryableError, StepFailed
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers import build_provider
from agentmill.gateway.providers._http import retry_after as retry_after_seconds
from agentmill.gateway.providers.openai import OpenAIProvider
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
from tests.gateway.wire._harness import WireRequest, WireResponse, WireServer
from tests.gateway.wire.openai_server import (
    OpenAIFake,
    embedding_for,
    openai_error,
    openai_server,
)

KEY = "sk-test-0123456789abcdef"
MODEL = "openai/gpt-4o-mini"
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CLOCK = ToolSpec(name="get_time", parameters={"type": "object", "properties": {}})


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    with openai_server(api_key=KEY) as server:
        yield server


def make_provider(fake: OpenAIFake, **overrides: Any) -> OpenAIProvider:
    settings: dict[str, Any] = {
        "name": "openai",
        "kind": "openai",
        "base_url": fake.base_url,
        "api_key": KEY,
        "timeout": 10.0,
    }
    settings.update(overrides)
    return OpenAIProvider(ProviderConfig(**settings))


@pytest.fixture
async def provider(fake: OpenAIFake) -> AsyncIterator[OpenAIProvider]:
    provider = make_provider(fake)
    yield provider
    await provider.aclose()


def ask(prompt: str = "What is the capital of France?", **kwargs: Any) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=(Message(role="user", content=prompt),), **kwargs)


async def collect(
    provider: OpenAIProvider, request: ChatRequest, into: list[ChatDelta] | None = None
) -> list[ChatDelta]:
    """The stream's deltas; ``into`` keeps those that arrived when the stream fails."""
    deltas = [] if into is None else into
    async for delta in provider.stream(request):
        deltas.append(delta)
    return deltas


# ---------------------------------------------------------------- chat: what goes over the wire


async def test_chat_sends_the_conversation_tools_and_settings_in_openai_format(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply("It is 18 degrees in Paris.")
    history = (
        Message(role="system", content="Be brief."),
        Message(role="user", content="Weather and time in Paris?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(
                ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"}),
                ToolCall(id="call_2", name="get_time", arguments={}),
            ),
        ),
        Message(role="tool", content="18C", tool_call_id="call_1", name="get_weather"),
        Message(role="tool", content="14:05", tool_call_id="call_2", name="get_time"),
    )
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    response = await provider.chat(
        ChatRequest(
            model=MODEL,
            messages=history,
            temperature=0.2,
            top_p=0.9,
            max_tokens=50,
            stop=("END",),
            tools=(WEATHER, CLOCK),
            tool_choice="get_weather",
            response_schema=schema,
        )
    )

    assert response.content == "It is 18 degrees in Paris."
    # The fake answers as a dated snapshot; the response keeps the name the caller used.
    assert response.model == MODEL
    assert response.finish_reason == "stop"
    request = fake.server.requests[-1]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json() == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "content": "18C", "tool_call_id": "call_1"},
            {"role": "tool", "content": "14:05", "tool_call_id": "call_2"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        # OpenAI's reasoning models refuse max_tokens; max_completion_tokens works for all.
        "max_completion_tokens": 50,
        "stop": ["END"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": False},
        },
    }


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_time", {"type": "function", "function": {"name": "get_time"}}),
    ],
)
async def test_tool_choice_modes_and_a_named_tool(
    fake: OpenAIFake, provider: OpenAIProvider, choice: str, sent: Any
) -> None:
    await provider.chat(ask(tools=(WEATHER, CLOCK), tool_choice=choice))
    assert fake.chat_bodies[-1]["tool_choice"] == sent


async def test_tool_choice_is_not_sent_without_tools(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    # The API rejects tool_choice alone (the fake does too), so a stray one must not break a call.
    response = await provider.chat(ask("hello", tool_choice="required"))
    assert response.content == "hello"
    assert "tool_choice" not in fake.chat_bodies[-1]
    assert "tools" not in fake.chat_bodies[-1]


async def test_openai_options_pass_through_and_other_providers_options_are_ignored(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    options = {
        "seed": 7,
        "reasoning_effort": "low",
        "user": "user-42",
        "response_format": {"type": "json_object"},
        "reply": "a scripted provider's option",  # for another provider: not sent
        "num_ctx": 8192,  # Ollama's: not sent
        "n": 3,  # would break the one-answer format: not sent
        "openai": {"prompt_cache_key": "brief-v1"},  # this provider's own: sent as is
        "local": {"top_k": 20},  # another configured provider's own: not sent
    }
    await provider.chat(ask(options=options))
    body = fake.chat_bodies[-1]
    assert {k: v for k, v in body.items() if k not in ("model", "messages")} == {
        "seed": 7,
        "reasoning_effort": "low",
        "user": "user-42",
        "response_format": {"type": "json_object"},
        "prompt_cache_key": "brief-v1",
    }


async def test_a_response_schema_wins_over_a_response_format_option(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    schema = {"type": "object"}
    await provider.chat(ask(response_schema=schema, options={"response_format": {"type": "text"}}))
    assert fake.chat_bodies[-1]["response_format"]["json_schema"]["schema"] == schema


async def test_arguments_the_model_wrote_as_invalid_json_go_back_as_written(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    history = (
        Message(role="user", content="weather?"),
        Message(
            role="assistant",
            content="Let me check.",
            tool_calls=(ToolCall(id="c1", name="get_weather", arguments={"_raw": '{"city": Par'}),),
        ),
        Message(role="tool", content="error: arguments are not JSON", tool_call_id="c1"),
    )
    await provider.chat(ChatRequest(model=MODEL, messages=history, tools=(WEATHER,)))
    assistant = fake.chat_bodies[-1]["messages"][1]
    assert assistant["content"] == "Let me check."
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city": Par'


async def test_a_tool_result_without_a_call_id_fails_before_any_request(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    request = ChatRequest(
        model=MODEL,
        messages=(Message(role="user", content="x"), Message(role="tool", content="42")),
    )
    with pytest.raises(StepFailed, match="tool result message has no tool_call_id"):
        await provider.chat(request)
    assert fake.server.requests == []


# ---------------------------------------------------------------- chat: what comes back


async def test_usage_counts_cached_and_reasoning_tokens(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply(
        "Paris.",
        prompt_tokens=1200,
        completion_tokens=340,
        cached_tokens=1024,
        reasoning_tokens=300,
    )
    response = await provider.chat(ask())
    assert response.usage == Usage(
        input_tokens=1200, output_tokens=340, cached_tokens=1024, reasoning_tokens=300
    )


async def test_a_server_that_reports_no_usage_gives_zero_tokens(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply("Paris.", usage=False)
    assert (await provider.chat(ask())).usage == Usage()
    fake.reply("Paris.", usage=False)
    deltas = await collect(provider, ask())
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is None


async def test_parallel_tool_calls_come_back_parsed(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply(tool_calls=[("get_weather", {"city": "Paris"}), ("get_time", {})])
    response = await provider.chat(ask(tools=(WEATHER, CLOCK)))
    assert response.content == ""
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall(id="call_fake1_0", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="call_fake1_1", name="get_time", arguments={}),
    )


@pytest.mark.parametrize(
    ("upstream", "calls", "normalized"),
    [
        ("length", [], "length"),
        ("content_filter", [], "content_filter"),
        # Some compatible servers end a tool-calling turn with "stop": the tools still run.
        ("stop", [("get_time", {})], "tool_calls"),
    ],
)
async def test_finish_reasons_are_normalized(
    fake: OpenAIFake,
    provider: OpenAIProvider,
    upstream: str,
    calls: list[tuple[str, dict[str, Any]]],
    normalized: str,
) -> None:
    fake.reply("partial", tool_calls=calls, finish_reason=upstream)
    assert (await provider.chat(ask(tools=(CLOCK,)))).finish_reason == normalized
    fake.reply("partial", tool_calls=calls, finish_reason=upstream)
    assert (await collect(provider, ask(tools=(CLOCK,))))[-1].finish_reason == normalized


async def test_a_refusal_is_the_answer_with_finish_reason_content_filter(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply(refusal="I can't help with that.")
    response = await provider.chat(ask(response_schema={"type": "object"}))
    assert (response.content, response.finish_reason) == (
        "I can't help with that.",
        "content_filter",
    )
    fake.reply(refusal="I can't help with that.")
    collector = StreamCollector(MODEL)
    for delta in await collect(provider, ask()):
        collector.add(delta)
    assert collector.response().content == "I can't help with that."
    assert collector.finish_reason == "content_filter"


# ---------------------------------------------------------------- streaming


async def test_stream_sends_text_in_pieces_then_the_finish_and_usage_last(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    answer = "The capital of France is Paris, on the Seine."
    fake.reply(answer, prompt_tokens=30, completion_tokens=12, cached_tokens=16)
    deltas = await collect(provider, ask(max_tokens=40))

    body = fake.chat_bodies[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 40
    texts = [d.text for d in deltas if d.text]
    assert len(texts) > 1
    assert "".join(texts) == answer
    # The usage chunk comes after the finish chunk; both arrive as one last delta.
    assert [d.finish_reason for d in deltas].count("stop") == 1
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == Usage(input_tokens=30, output_tokens=12, cached_tokens=16)


async def test_streamed_tool_call_arguments_arrive_split_and_collect_whole(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    arguments = {"city": "Paris", "units": "metric", "days": 3}
    fake.reply(tool_calls=[("call_abc", "get_weather", arguments)], reasoning_tokens=5)
    deltas = await collect(provider, ask(tools=(WEATHER,)))

    pieces = [p for d in deltas for p in d.tool_calls]
    assert pieces[0].id == "call_abc"
    assert pieces[0].name == "get_weather"
    assert sum(1 for p in pieces if p.arguments) > 2  # really split over several chunks
    assert all(p.id is None and p.name is None for p in pieces[1:])
    collector = StreamCollector(MODEL)
    for delta in deltas:
        collector.add(delta)
    response = collector.response()
    assert response.tool_calls == (
        ToolCall(id="call_abc", name="get_weather", arguments=arguments),
    )
    assert response.finish_reason == "tool_calls"
    assert response.usage.reasoning_tokens == 5


async def test_two_streamed_parallel_tool_calls_keep_their_indexes(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply(
        "Checking both.",
        tool_calls=[("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Lima"})],
    )
    deltas = await collect(provider, ask(tools=(WEATHER,)))
    indexes = {p.index for d in deltas for p in d.tool_calls}
    assert indexes == {0, 1}
    collector = StreamCollector(MODEL)
    for delta in deltas:
        collector.add(delta)
    response = collector.response()
    assert response.content == "Checking both."
    assert [(c.id, c.arguments) for c in response.tool_calls] == [
        ("call_fake1_0", {"city": "Oslo"}),
        ("call_fake1_1", {"city": "Lima"}),
    ]


async def test_a_stream_left_early_frees_its_connection(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply("one two three four five six seven eight nine ten eleven twelve thirteen")
    stream = provider.stream(ask())
    assert (await anext(stream)).text == "one two thre"
    await stream.aclose()
    assert (await provider.chat(ask("still works"))).content == "still works"


# ---------------------------------------------------------------- embeddings


async def test_embeddings_come_back_in_input_order(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reverse_embeddings = True  # "index" is the contract, not the order of "data"
    texts = ("bees make honey", "ants build nests", "wasps sting")
    response = await provider.embed(
        EmbedRequest(model="openai/text-embedding-3-small", inputs=texts, dimensions=8)
    )
    assert response.vectors == tuple(tuple(embedding_for(t, 8)) for t in texts)
    assert response.model == "openai/text-embedding-3-small"
    assert response.usage == Usage(input_tokens=4 + 4 + 3)
    body = fake.server.requests[-1].json()
    assert fake.server.requests[-1].path == "/v1/embeddings"
    # The SDK asks for base64 (smaller) and decodes it; the vectors above prove it did.
    assert body == {
        "model": "text-embedding-3-small",
        "input": list(texts),
        "dimensions": 8,
        "encoding_format": "base64",
    }


async def test_no_inputs_means_no_request(fake: OpenAIFake, provider: OpenAIProvider) -> None:
    response = await provider.embed(EmbedRequest(model="openai/text-embedding-3-small", inputs=()))
    assert response.vectors == ()
    assert fake.server.requests == []


# ---------------------------------------------------------------- OpenAI-compatible servers


async def test_a_compatible_server_without_a_key_gets_a_placeholder_and_no_openai_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The SDK would read these; none of them belongs to somebody else's server.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key-do-not-leak")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret")
    with openai_server() as local:
        config = ProviderConfig(
            name="local",
            kind="openai_compatible",
            base_url=local.base_url,
            headers={"HTTP-Referer": "https://agentmill.example"},
        )
        provider = build_provider(config)
        try:
            assert isinstance(provider, OpenAIProvider)
            response = await provider.chat(
                ChatRequest(
                    model="local/Qwen/Qwen3-8B",
                    messages=(Message(role="user", content="hi"),),
                    max_tokens=64,
                    options={"local": {"top_k": 20, "min_p": 0.05}},
                )
            )
            vectors = await provider.embed(EmbedRequest(model="local/bge-small", inputs=("hi",)))
        finally:
            await provider.aclose()

    assert response.content == "hi"
    assert response.model == "local/Qwen/Qwen3-8B"
    assert vectors.vectors == (tuple(embedding_for("hi", local.default_dimensions)),)
    chat = local.server.requests[0]
    assert chat.headers["authorization"] == "Bearer no-key"
    assert "openai-organization" not in chat.headers
    assert "openai-project" not in chat.headers
    assert chat.headers["http-referer"] == "https://agentmill.example"
    assert chat.json() == {
        "model": "Qwen/Qwen3-8B",  # everything after the provider's name
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,  # the name every compatible server knows
        "top_k": 20,
        "min_p": 0.05,
    }


def test_the_openai_kind_needs_a_key() -> None:
    with pytest.raises(ConfigError, match=re.escape("provider 'openai': no API key")):
        OpenAIProvider(ProviderConfig(name="openai", kind="openai", api_key=None))


async def test_aclose_closes_the_client(fake: OpenAIFake) -> None:
    provider = make_provider(fake)
    await provider.aclose()
    with pytest.raises(RuntimeError, match="client has been closed"):
        await provider.chat(ask())
    assert fake.server.requests == []


# ---------------------------------------------------------------- failures


async def test_a_server_error_is_retryable_after_exactly_one_request(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.server.fail(500, times=3)
    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())
    assert caught.value.status == 500
    assert str(caught.value) == f"{MODEL}: 500 Internal Server Error: injected failure"
    assert len(fake.server.requests) == 1  # the SDK's own retries are off


async def test_a_rate_limit_says_when_to_retry(fake: OpenAIFake, provider: OpenAIProvider) -> None:
    fake.server.fail(429, retry_after=3)
    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)
    assert str(caught.value) == (
        f"{MODEL}: 429 Too Many Requests: injected failure (retry after 3s)"
    )
    assert len(fake.server.requests) == 1


async def test_a_rate_limited_stream_fails_before_any_delta(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.server.fail(429, retry_after=1.5)
    deltas: list[ChatDelta] = []
    with pytest.raises(RetryableError) as caught:
        await collect(provider, ask(), into=deltas)
    assert deltas == []
    assert (caught.value.status, caught.value.retry_after) == (429, 1.5)


async def test_a_bad_request_fails_the_step_quoting_the_upstream(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    # A tool result answering no call: the real API's 400, reproduced by the fake.
    request = ChatRequest(
        model=MODEL,
        messages=(
            Message(role="user", content="x"),
            Message(role="tool", content="42", tool_call_id="call_nowhere"),
        ),
    )
    with pytest.raises(StepFailed) as caught:
        await provider.chat(request)
    assert caught.value.status == 400
    assert str(caught.value) == (
        f"{MODEL}: 400 Bad Request: Invalid parameter: messages with role 'tool' must be a "
        "response to a preceeding message with 'tool_calls'."
    )
    assert not isinstance(caught.value, RetryableError)


async def test_a_wrong_key_fails_the_step_without_repeating_the_key(fake: OpenAIFake) -> None:
    wrong = "sk-wrong-key-9876543210"
    provider = make_provider(fake, api_key=wrong)
    try:
        with pytest.raises(StepFailed) as caught:
            await provider.chat(ask())
    finally:
        await provider.aclose()
    assert caught.value.status == 401
    # The fake quotes the key it was given, as some servers do; the error must not.
    assert str(caught.value) == f"{MODEL}: 401 Unauthorized: Incorrect API key provided: ***."
    assert wrong not in str(caught.value)
    assert caught.value.__cause__ is None  # the SDK's exception (which has the key) is not kept
    assert caught.value.__suppress_context__


async def test_a_key_in_a_configured_header_is_kept_out_of_errors() -> None:
    header_key = "azure-style-key-5555"

    async def quote_the_header(request: WireRequest) -> WireResponse:
        message = f"Invalid api-key {request.headers.get('api-key')}"
        return WireResponse(status=400, body=openai_error(400, message))

    with WireServer(quote_the_header, openai_error) as server:
        config = ProviderConfig(
            name="azure",
            kind="openai_compatible",
            base_url=server.url + "/v1",
            headers={"api-key": header_key},
        )
        provider = OpenAIProvider(config)
        try:
            with pytest.raises(StepFailed) as caught:
                await provider.chat(
                    ChatRequest(model="azure/gpt-4o", messages=(Message(role="user", content="x"),))
                )
        finally:
            await provider.aclose()
    assert server.requests[0].headers["api-key"] == header_key
    assert str(caught.value) == "azure/gpt-4o: 400 Bad Request: Invalid api-key ***"


async def test_a_dropped_connection_is_retryable(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.server.drop()
    with pytest.raises(RetryableError, match=re.escape(f"{MODEL}: connection failed: ")) as caught:
        await provider.chat(ask())
    assert caught.value.status is None
    assert len(fake.server.requests) == 1


async def test_an_answer_slower_than_the_timeout_is_retryable(fake: OpenAIFake) -> None:
    provider = make_provider(fake, timeout=0.1)
    fake.server.slow(0.5)
    try:
        with pytest.raises(RetryableError, match=re.escape(f"{MODEL}: timed out after 0.1s")):
            await provider.chat(ask())
    finally:
        await provider.aclose()
    assert len(fake.server.requests) == 1


async def test_a_stream_cut_mid_way_is_retryable(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply("A long answer that will never be finished by this server.")
    fake.server.drop_mid_stream()
    with pytest.raises(RetryableError, match=re.escape(f"{MODEL}: connection failed: ")):
        await collect(provider, ask())
    # The connection is gone, not the provider: the next stream works.
    assert (await collect(provider, ask("again")))[0].text == "again"


async def test_an_error_event_mid_stream_is_retryable(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    fake.reply("Half an ans", stream_error="The server had an error while processing your request.")
    deltas: list[ChatDelta] = []
    with pytest.raises(RetryableError) as caught:
        await collect(provider, ask(), into=deltas)
    assert "".join(d.text for d in deltas) == "Half an ans"
    assert str(caught.value) == (
        f"{MODEL}: error in stream: The server had an error while processing your request."
    )


async def test_a_stream_that_ends_without_finishing_is_retryable(
    fake: OpenAIFake, provider: OpenAIProvider
) -> None:
    # A proxy that gives up may close the body properly; the answer is still incomplete.
    fake.reply("Half an ans", stream_cut=True)
    deltas: list[ChatDelta] = []
    with pytest.raises(RetryableError) as caught:
        await collect(provider, ask(), into=deltas)
    assert "".join(d.text for d in deltas) == "Half an ans"
    assert all(d.finish_reason is None for d in deltas)
    assert str(caught.value) == f"{MODEL}: the stream ended before the answer finished"


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    wait = retry_after_seconds({"retry-after": later})
    assert wait is not None
    assert 25 <= wait <= 30
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds({"retry-after": past}) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


# ---------------------------------------------------------------- the fake itself


async def test_the_fake_lists_models_and_checks_the_key(fake: OpenAIFake) -> None:
    async with openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0) as client:
        models = [m.id async for m in client.models.list()]
    assert models == fake.models
    async with openai.AsyncOpenAI(api_key="sk-nope", base_url=fake.base_url, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()

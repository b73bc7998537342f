"""The Ollama provider against a local server speaking Ollama's wire protocol."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import ollama
import pytest

from agentmill.errors import RetryableError, StepFailed
from agentmill.gateway import CallContext, ChatRequest, Message
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers import build_provider
from agentmill.gateway.providers.ollama import OllamaProvider
from agentmill.gateway.types import (
    ChatDelta,
    ChatResponse,
    EmbedRequest,
    StreamCollector,
    ToolCall,
    ToolSpec,
)
from tests.gateway.wire.ollama_server import FakeOllama, ollama_server, vector

WEATHER = ToolSpec(
    name="weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "units": {"type": "string", "enum": ["C", "F"]},
            "days": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["city"],
    },
)
TIME = ToolSpec(name="time", description="Local time in a city")


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with ollama_server() as fake:
        yield fake


def make(url: str, timeout: float = 5.0, api_key: str | None = None) -> OllamaProvider:
    return OllamaProvider(
        ProviderConfig(name="ollama", kind="ollama", base_url=url, timeout=timeout, api_key=api_key)
    )


@pytest.fixture
async def provider(server: FakeOllama) -> AsyncIterator[OllamaProvider]:
    local = make(server.url)
    yield local
    await local.aclose()


def ask(prompt: str = "Hello there", **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="ollama/llama3.2", messages=(Message(role="user", content=prompt),), **kwargs
    )


async def collect(
    provider: OllamaProvider, request: ChatRequest
) -> tuple[list[ChatDelta], ChatResponse]:
    deltas = [delta async for delta in provider.stream(request)]
    collector = StreamCollector(request.model)
    for delta in deltas:
        collector.add(delta)
    return deltas, collector.response()


async def drain(stream: AsyncIterator[ChatDelta], into: list[ChatDelta]) -> None:
    async for delta in stream:
        into.append(delta)


# ---------------------------------------------------------------- requests on the wire


async def test_a_chat_sends_messages_and_options_and_reads_the_answer_and_counts(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    request = ChatRequest(
        model="ollama/llama3.2",
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="Name a bee."),
            Message(role="assistant", content="Apis mellifera."),
            Message(role="user", content="Another one?"),
        ),
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop=("END",),
        options={"num_ctx": 8192, "seed": 7, "keep_alive": "5m", "think": False, "reply": "x"},
    )
    server.reply("Bombus terrestris.", prompt_eval_count=31, eval_count=6)

    response = await provider.chat(request)

    assert response.content == "Bombus terrestris."
    assert response.model == "ollama/llama3.2"
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (31, 6)
    (sent,) = server.requests
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json() == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a bee."},
            {"role": "assistant", "content": "Apis mellifera."},
            {"role": "user", "content": "Another one?"},
        ],
        "tools": [],
        "stream": False,
        "think": False,
        "options": {
            "num_ctx": 8192,
            "seed": 7,
            "temperature": 0.2,
            "top_p": 0.9,
            "num_predict": 64,
            "stop": ["END"],
        },
        "keep_alive": "5m",
    }


async def test_a_response_schema_is_sent_as_the_format(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    schema = {"type": "object", "properties": {"bees": {"type": "array"}}, "required": ["bees"]}
    server.reply('{"bees": ["Apis"]}')

    response = await provider.chat(ask(response_schema=schema))

    assert response.content == '{"bees": ["Apis"]}'
    assert server.bodies()[0]["format"] == schema


async def test_tools_are_offered_as_functions(server: FakeOllama, provider: OllamaProvider) -> None:
    await provider.chat(ask(tools=(WEATHER, TIME)))

    assert server.bodies()[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "required": ["city"],
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "units": {"type": "string", "enum": ["C", "F"]},
                        "days": {"type": "array", "items": {"type": "integer"}},
                    },
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "time",
                "description": "Local time in a city",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]


@pytest.mark.parametrize(
    ("choice", "offered"),
    [
        ("auto", ["weather", "time"]),
        ("required", ["weather", "time"]),
        ("time", ["time"]),
        ("none", []),
    ],
)
async def test_tool_choice_decides_which_tools_are_offered(
    server: FakeOllama, provider: OllamaProvider, choice: str, offered: list[str]
) -> None:
    await provider.chat(ask(tools=(WEATHER, TIME), tool_choice=choice))

    assert [t["function"]["name"] for t in server.bodies()[0]["tools"]] == offered


# ---------------------------------------------------------------- tool calls


async def test_tool_calls_come_back_with_stable_ids_and_object_arguments(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    calls = [
        {"name": "weather", "arguments": {"city": "Oslo", "days": [1, 2]}},
        {"name": "time", "arguments": {}},
    ]
    server.reply(calls=calls)
    server.reply(calls=calls)

    first = await provider.chat(ask(tools=(WEATHER, TIME)))
    later = await provider.chat(ask(tools=(WEATHER, TIME), context=CallContext(turn=2)))

    assert first.finish_reason == "tool_calls"
    assert first.tool_calls == (
        ToolCall(id="call_0_0", name="weather", arguments={"city": "Oslo", "days": [1, 2]}),
        ToolCall(id="call_0_1", name="time", arguments={}),
    )
    assert [c.id for c in later.tool_calls] == ["call_2_0", "call_2_1"]


async def test_tool_results_go_back_as_tool_messages_with_the_tool_name(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    history = (
        Message(role="user", content="Weather and time in Oslo?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(
                ToolCall(id="call_0_0", name="weather", arguments={"city": "Oslo"}),
                ToolCall(id="call_0_1", name="time", arguments={}),
            ),
        ),
        Message(role="tool", content='{"temp": 21}', tool_call_id="call_0_0", name="weather"),
        Message(role="tool", content="14:05", tool_call_id="call_0_1"),  # name from the call
    )

    response = await provider.chat(
        ChatRequest(model="ollama/llama3.2", messages=history, tools=(WEATHER, TIME))
    )

    assert response.content == "echo: 14:05"
    assert server.bodies()[0]["messages"][1:] == [
        {
            "role": "assistant",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                {"function": {"name": "time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "weather"},
        {"role": "tool", "content": "14:05", "tool_name": "time"},
    ]


# ---------------------------------------------------------------- finish reasons


@pytest.mark.parametrize(
    ("done_reason", "calls", "expected"),
    [
        ("stop", [], "stop"),
        ("length", [], "length"),
        ("stop", [{"name": "time", "arguments": {}}], "tool_calls"),
        ("unload", [], "stop"),
    ],
)
async def test_done_reasons_are_normalized(
    server: FakeOllama,
    provider: OllamaProvider,
    done_reason: str,
    calls: list[dict[str, Any]],
    expected: str,
) -> None:
    server.reply("Some answer", calls=calls, done_reason=done_reason)
    server.reply("Some answer", calls=calls, done_reason=done_reason)

    response = await provider.chat(ask(tools=(TIME,)))
    _, streamed = await collect(provider, ask(tools=(TIME,)))

    assert response.finish_reason == expected
    assert streamed.finish_reason == expected


# ---------------------------------------------------------------- streaming


async def test_a_stream_sends_text_in_pieces_then_the_finish_and_the_counts(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    text = "Bees dance to tell each other where the flowers are."
    server.reply(text, thinking="Bees, dancing, directions.", prompt_eval_count=12, eval_count=15)

    deltas, response = await collect(provider, ask("How do bees talk?"))

    assert server.bodies()[0]["stream"] is True
    texts = [d.text for d in deltas if d.text]
    assert len(texts) > 2
    assert "".join(texts) == text
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert response.content == text
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 15)


async def test_streamed_tool_calls_arrive_whole_with_indexes_and_stable_ids(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    server.reply(
        "Checking.",
        calls=[
            {"name": "weather", "arguments": {"city": "Oslo"}},
            {"name": "time", "arguments": {}},
        ],
    )

    deltas, response = await collect(provider, ask(tools=(WEATHER, TIME)))

    pieces = [piece for d in deltas for piece in d.tool_calls]
    assert [(p.index, p.id, p.name, p.arguments) for p in pieces] == [
        (0, "call_0_0", "weather", '{"city":"Oslo"}'),
        (1, "call_0_1", "time", "{}"),
    ]
    assert response.tool_calls == (
        ToolCall(id="call_0_0", name="weather", arguments={"city": "Oslo"}),
        ToolCall(id="call_0_1", name="time", arguments={}),
    )
    assert (response.content, response.finish_reason) == ("Checking.", "tool_calls")


# ---------------------------------------------------------------- embeddings and the fake


async def test_embeddings_are_one_request_with_vectors_in_order(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    inputs = ("bees make honey", "wasps do not")

    response = await provider.embed(
        EmbedRequest(model="ollama/nomic-embed-text", inputs=inputs, dimensions=4)
    )

    (sent,) = server.requests
    assert (sent.method, sent.path) == ("POST", "/api/embed")
    assert sent.json() == {"model": "nomic-embed-text", "input": list(inputs), "dimensions": 4}
    assert response.vectors == tuple(tuple(vector(text, 4)) for text in inputs)
    assert response.usage.input_tokens == 6


async def test_the_fake_lists_its_models_as_the_sdk_expects(server: FakeOllama) -> None:
    client = ollama.AsyncClient(host=server.url)
    try:
        listing = await client.list()
    finally:
        await client.close()  # type: ignore[no-untyped-call]

    assert [m.model for m in listing.models] == list(server.models)
    assert listing.models[0].details is not None
    assert listing.models[0].details.quantization_level == "Q4_K_M"


# ---------------------------------------------------------------- failures


async def test_a_server_error_is_retryable_and_quotes_ollama(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    server.error(500, "llama runner process has terminated: exit status 2")

    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())

    assert str(caught.value) == (
        "ollama/llama3.2: 500 Internal Server Error: "
        "llama runner process has terminated: exit status 2"
    )
    assert (caught.value.status, caught.value.retry_after) == (500, None)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_busy_answers_are_retryable_after_the_retry_after_header(
    server: FakeOllama, provider: OllamaProvider, status: int
) -> None:
    server.wire.fail(status, retry_after=2)

    with pytest.raises(RetryableError) as caught:
        await provider.stream(ask()).__anext__()

    assert str(caught.value).endswith("injected failure (retry after 2s)")
    assert (caught.value.status, caught.value.retry_after) == (status, 2.0)
    assert len(server.requests) == 1


async def test_an_unknown_model_is_terminal(server: FakeOllama, provider: OllamaProvider) -> None:
    with pytest.raises(StepFailed) as caught:
        await provider.chat(
            ChatRequest(model="ollama/llama9", messages=(Message(role="user", content="hi"),))
        )

    assert str(caught.value) == (
        'ollama/llama9: 404 Not Found: model "llama9" not found, try pulling it first'
    )
    assert caught.value.status == 404
    assert len(server.requests) == 1


async def test_a_bad_request_is_terminal_and_never_shows_the_key(server: FakeOllama) -> None:
    key = "olk-secret-0123456789"
    remote = make(server.url, api_key=key)
    server.error(400, f"invalid key prefix in {key}")
    try:
        with pytest.raises(StepFailed) as caught:
            await remote.embed(EmbedRequest(model="ollama/nomic-embed-text", inputs=("x",)))
    finally:
        await remote.aclose()

    assert (
        str(caught.value) == "ollama/nomic-embed-text: 400 Bad Request: invalid key prefix in ***"
    )
    assert server.requests[0].headers["authorization"] == f"Bearer {key}"


async def test_a_dropped_connection_is_retryable_and_tried_once(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    server.wire.drop()

    with pytest.raises(RetryableError, match=r"^ollama/llama3.2: connection failed: "):
        await provider.chat(ask())

    assert len(server.requests) == 1


async def test_no_server_listening_is_retryable_for_chats_and_streams() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{spare.getsockname()[1]}"
    nobody = make(url)
    try:
        with pytest.raises(RetryableError, match="connection failed: Failed to connect to Ollama"):
            await nobody.chat(ask())
        with pytest.raises(RetryableError, match="connection failed: "):
            await drain(nobody.stream(ask()), [])
    finally:
        await nobody.aclose()


async def test_a_stream_cut_in_the_middle_is_retryable_and_tried_once(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    server.reply("one two three four five six")
    server.wire.drop_mid_stream()
    received: list[ChatDelta] = []

    with pytest.raises(RetryableError, match="connection failed"):
        await drain(provider.stream(ask()), received)

    assert [d.text for d in received] == ["one two "]
    assert len(server.requests) == 1


async def test_an_error_line_in_the_middle_of_a_stream_is_retryable(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    server.error(500, "model runner has unexpectedly stopped", mid_stream=True)

    with pytest.raises(
        RetryableError,
        match=re.escape(
            "ollama/llama3.2: the stream failed: model runner has unexpectedly stopped"
        ),
    ):
        await drain(provider.stream(ask()), [])

    assert len(server.requests) == 1


async def test_a_stream_that_ends_without_its_done_line_is_retryable(
    server: FakeOllama, provider: OllamaProvider
) -> None:
    server.reply("cut short", unfinished=True)
    received: list[ChatDelta] = []

    with pytest.raises(RetryableError, match="the stream ended before it was done"):
        await drain(provider.stream(ask()), received)

    assert "".join(d.text for d in received) == "cut short"


async def test_a_slow_answer_times_out_as_retryable(server: FakeOllama) -> None:
    local = make(server.url, timeout=0.2)
    server.wire.slow(0.8)
    try:
        with pytest.raises(RetryableError, match=r"no answer within 0.2s"):
            await local.chat(ask())
    finally:
        await local.aclose()

    assert len(server.requests) == 1


async def test_the_registry_builds_it_for_the_default_local_server() -> None:
    built = build_provider(ProviderConfig(name="local", kind="ollama"))
    try:
        assert isinstance(built, OllamaProvider)
        assert built.name == "local"
        assert str(built._client._client.base_url) == "http://127.0.0.1:11434"
    finally:
        await built.aclose()

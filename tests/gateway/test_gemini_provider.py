"""The Gemini provider against a local server speaking Gemini's wire protocol."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentmill.errors import ConfigError, RetryableError, StepFailed
from agentmill.gateway import CallContext, ChatRequest, Message
from agentmill.gateway.config import ProviderConfig
from agentmill.gateway.providers import build_provider
from agentmill.gateway.providers.gemini import GeminiProvider
from agentmill.gateway.types import (
    ChatDelta,
    EmbedRequest,
    StreamCollector,
    ToolCall,
    ToolSpec,
)
from tests.gateway.wire.gemini_server import (
    PLACEHOLDER_SIGNATURE,
    FakeGemini,
    gemini_server,
    vector,
)

KEY = "AIza-test-key-0123456789"
WEATHER = ToolSpec(
    name="weather",
    description="Current weather in a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
            "units": {"type": "object", "properties": {"temp": {"enum": ["C", "F"]}}},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
TIME = ToolSpec(name="time", description="Local time in a city")


@pytest.fixture
def server() -> Iterator[FakeGemini]:
    with gemini_server(KEY) as fake:
        yield fake


def make(server: FakeGemini, timeout: float = 5.0) -> GeminiProvider:
    return GeminiProvider(
        ProviderConfig(
            name="gemini",
            kind="gemini",
            base_url=server.url,
            api_key=KEY,
            timeout=timeout,
            headers={"x-team": "research"},
        )
    )


@pytest.fixture
async def provider(server: FakeGemini) -> AsyncIterator[GeminiProvider]:
    gemini = make(server)
    yield gemini
    await gemini.aclose()


def ask(
    prompt: str = "Hello there", model: str = "gemini/gemini-2.5-flash", **kwargs: Any
) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", content=prompt),), **kwargs)


async def collect(provider: GeminiProvider, request: ChatRequest) -> tuple[list[ChatDelta], Any]:
    deltas = [delta async for delta in provider.stream(request)]
    collector = StreamCollector(request.model)
    for delta in deltas:
        collector.add(delta)
    return deltas, collector.response()


async def drain(stream: AsyncIterator[ChatDelta], into: list[ChatDelta]) -> None:
    async for delta in stream:
        into.append(delta)


# ---------------------------------------------------------------- requests on the wire


async def test_a_chat_sends_the_system_instruction_roles_and_generation_config(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    request = ChatRequest(
        model="gemini/gemini-2.5-flash",
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="Name a bee."),
            Message(role="assistant", content="Apis mellifera."),
            Message(role="system", content="Answer in French."),
            Message(role="user", content="Another one?"),
        ),
        temperature=0.2,
        top_p=0.9,
        max_tokens=64,
        stop=("END",),
        options={"seed": 7, "thinking_config": {"thinking_budget": 0}, "reply": "ignored"},
    )

    response = await provider.chat(request)

    assert response.content == "echo: Another one?"
    assert response.model == "gemini/gemini-2.5-flash"
    assert response.finish_reason == "stop"
    (sent,) = server.requests
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.headers["x-team"] == "research"
    body = server.bodies()[0]
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief.\n\nAnswer in French."}]
    assert [(c["role"], c["parts"]) for c in body["contents"]] == [
        ("user", [{"text": "Name a bee."}]),
        ("model", [{"text": "Apis mellifera."}]),
        ("user", [{"text": "Another one?"}]),
    ]
    assert body["generationConfig"] == {
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 64,
        "stopSequences": ["END"],
        "seed": 7,
        "thinkingConfig": {"thinkingBudget": 0},
    }
    assert "tools" not in body
    assert "toolConfig" not in body


async def test_usage_counts_cached_tool_prompt_and_thought_tokens_and_thoughts_are_not_answer(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply(
        "Forty-two.",
        thoughts="The user wants the answer to everything.",
        usage={
            "promptTokenCount": 100,
            "cachedContentTokenCount": 40,
            "toolUsePromptTokenCount": 5,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 20,
            "totalTokenCount": 132,
        },
    )

    response = await provider.chat(ask())

    assert response.content == "Forty-two."
    usage = response.usage
    assert (usage.input_tokens, usage.cached_tokens) == (105, 40)
    assert (usage.output_tokens, usage.reasoning_tokens) == (27, 20)
    assert usage.cost == 0


async def test_tools_are_declared_with_their_json_schema_untouched(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    await provider.chat(ask("Weather in Oslo?", tools=(WEATHER, TIME)))

    body = server.bodies()[0]
    declarations = body["tools"][0]["functionDeclarations"]
    assert declarations == [
        {
            "name": "weather",
            "description": "Current weather in a city",
            "parametersJsonSchema": dict(WEATHER.parameters),
        },
        {
            "name": "time",
            "description": "Local time in a city",
            "parametersJsonSchema": {"type": "object", "properties": {}},
        },
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("time", {"mode": "ANY", "allowedFunctionNames": ["time"]}),
    ],
)
async def test_tool_choice_becomes_the_function_calling_mode(
    server: FakeGemini, provider: GeminiProvider, choice: str, expected: dict[str, Any]
) -> None:
    await provider.chat(ask(tools=(WEATHER, TIME), tool_choice=choice))

    assert server.bodies()[0]["toolConfig"] == {"functionCallingConfig": expected}


async def test_a_response_schema_asks_for_json_that_fits_it(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    schema = {"type": "object", "properties": {"bees": {"type": "array"}}, "required": ["bees"]}
    server.reply('{"bees": ["Apis"]}')

    response = await provider.chat(ask(response_schema=schema))

    assert response.content == '{"bees": ["Apis"]}'
    config = server.bodies()[0]["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}


# ---------------------------------------------------------------- tool calls


async def test_function_calls_come_back_with_stable_ids_and_parsed_arguments(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    calls = [
        {"name": "weather", "args": {"city": "Oslo"}},
        {"name": "time", "args": {}},
    ]
    server.reply("Let me look.", calls=calls)
    server.reply(calls=calls)
    request = ask("Weather and time in Oslo?", tools=(WEATHER, TIME))

    first = await provider.chat(request)
    again = await provider.chat(request)

    assert first.content == "Let me look."
    assert first.finish_reason == "tool_calls"
    assert first.tool_calls == (
        ToolCall(id="call_0_0", name="weather", arguments={"city": "Oslo"}),
        ToolCall(id="call_0_1", name="time", arguments={}),
    )
    assert [c.id for c in again.tool_calls] == ["call_0_0", "call_0_1"]


async def test_call_ids_are_unique_across_turns_and_gemini_ids_are_kept(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply(calls=[{"name": "time", "args": {}}])
    server.reply(calls=[{"name": "time", "args": {}, "id": "fc-81"}])
    turn = CallContext(turn=3)

    made_up = await provider.chat(ask(tools=(TIME,), context=turn))
    given = await provider.chat(ask(tools=(TIME,), context=turn))

    assert made_up.tool_calls[0].id == "call_3_0"
    assert given.tool_calls[0].id == "fc-81"


async def test_tool_results_go_back_as_function_responses_named_after_their_tool(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    history = (
        Message(role="user", content="Weather and time in Oslo?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(
                ToolCall(id="call_0_0", name="weather", arguments={"city": "Oslo"}),
                ToolCall(id="fc-81", name="time", arguments={}),
            ),
        ),
        Message(
            role="tool",
            content='{"temp": 21, "sky": "clear"}',
            tool_call_id="call_0_0",
            name="weather",
        ),
        # No name: found from the call it answers.
        Message(role="tool", content="14:05", tool_call_id="fc-81"),
    )
    server.reply("It is 21 degrees and 14:05 in Oslo.")

    response = await provider.chat(
        ChatRequest(model="gemini/gemini-2.5-flash", messages=history, tools=(WEATHER, TIME))
    )

    assert response.content == "It is 21 degrees and 14:05 in Oslo."
    contents = server.bodies()[0]["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
            {"functionCall": {"id": "fc-81", "name": "time", "args": {}}},
        ],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "weather", "response": {"temp": 21, "sky": "clear"}}},
            {"functionResponse": {"id": "fc-81", "name": "time", "response": {"result": "14:05"}}},
        ],
    }
    assert len(contents) == 3


async def test_a_tool_result_for_an_unknown_call_without_a_name_is_refused_before_sending(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    messages = (
        Message(role="user", content="hi"),
        Message(role="tool", content="1", tool_call_id="x"),
    )

    with pytest.raises(StepFailed, match=re.escape("tool result 'x' has no tool name")):
        await provider.chat(ChatRequest(model="gemini/gemini-2.5-flash", messages=messages))
    assert server.requests == []


async def test_gemini_3_thought_signatures_travel_in_the_call_id_and_come_back(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply(
        calls=[{"name": "weather", "args": {"city": "Oslo"}}, {"name": "time", "args": {}}]
    )
    question = Message(role="user", content="Weather and time in Oslo?")
    first = await provider.chat(
        ask(question.content, model="gemini/gemini-3-pro", tools=(WEATHER, TIME))
    )
    weather, time = first.tool_calls
    assert weather.id.startswith("call_0_0__ts_")
    assert time.id == "call_0_1"

    answer = await provider.chat(
        ChatRequest(
            model="gemini/gemini-3-pro",
            messages=(
                question,
                Message(role="assistant", content="", tool_calls=first.tool_calls),
                Message(role="tool", content="21", tool_call_id=weather.id, name="weather"),
                Message(role="tool", content="14:05", tool_call_id=time.id, name="time"),
            ),
            tools=(WEATHER, TIME),
        )
    )

    model_turn = server.bodies()[1]["contents"][1]["parts"]
    assert model_turn[0]["thoughtSignature"] in server.signatures - {PLACEHOLDER_SIGNATURE}
    assert "thoughtSignature" not in model_turn[1]
    assert "id" not in model_turn[0]["functionCall"]
    assert answer.content.startswith("echo: ")


async def test_gemini_3_history_without_signatures_gets_the_documented_placeholder(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    messages = (
        Message(role="user", content="Time?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(ToolCall(id="toolu_01", name="time", arguments={}),),
        ),
        Message(role="tool", content="14:05", tool_call_id="toolu_01", name="time"),
    )

    await provider.chat(ChatRequest(model="gemini/gemini-3-flash", messages=messages))
    await provider.chat(ChatRequest(model="gemini/gemini-2.5-flash", messages=messages))

    gemini3, gemini25 = (body["contents"][1]["parts"][0] for body in server.bodies())
    assert gemini3["thoughtSignature"] == PLACEHOLDER_SIGNATURE
    assert "thoughtSignature" not in gemini25


async def test_a_damaged_signature_is_refused_by_the_service(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    messages = (
        Message(role="user", content="Time?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(ToolCall(id="call_0_0__ts_Zm9yZ2Vk", name="time", arguments={}),),
        ),
        Message(role="tool", content="14:05", tool_call_id="call_0_0__ts_Zm9yZ2Vk", name="time"),
    )

    with pytest.raises(StepFailed, match="400 Bad Request: Corrupted thought signature") as caught:
        await provider.chat(ChatRequest(model="gemini/gemini-3-flash", messages=messages))
    assert caught.value.status == 400


# ---------------------------------------------------------------- finish reasons


@pytest.mark.parametrize(
    ("gemini", "normalized"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("SPII", "content_filter"),
        ("OTHER", "stop"),
    ],
)
async def test_finish_reasons_are_normalized(
    server: FakeGemini, provider: GeminiProvider, gemini: str, normalized: str
) -> None:
    server.reply("Partial answer", finish_reason=gemini)
    server.reply("Partial answer", finish_reason=gemini)

    response = await provider.chat(ask())
    _, streamed = await collect(provider, ask())

    assert response.finish_reason == normalized
    assert streamed.finish_reason == normalized


async def test_a_blocked_prompt_is_a_content_filter_stop_with_no_answer(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply(block_reason="SAFETY")

    response = await provider.chat(ask())

    assert (response.content, response.finish_reason) == ("", "content_filter")
    assert response.usage.input_tokens > 0


# ---------------------------------------------------------------- streaming


async def test_a_stream_sends_text_in_pieces_then_the_finish_and_the_final_usage(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    text = "Bees dance to tell each other where the flowers are."
    server.reply(text, thoughts="Think about bees first.")

    deltas, response = await collect(provider, ask("How do bees talk?"))

    (sent,) = server.requests
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query == {"alt": "sse"}
    texts = [d.text for d in deltas if d.text]
    assert len(texts) > 2
    assert "".join(texts) == text
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == "stop"
    # usageMetadata is a running total on every event: the last one counts, not their sum.
    assert response.usage.output_tokens == len(text.split()) + 4
    assert response.usage.reasoning_tokens == 4
    assert response.content == text


async def test_streamed_function_calls_arrive_whole_with_indexes_and_stable_ids(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply(
        "Checking.",
        calls=[
            {"name": "weather", "args": {"city": "Oslo", "units": {"temp": "C"}}},
            {"name": "time", "args": {}},
        ],
    )

    deltas, response = await collect(provider, ask(tools=(WEATHER, TIME)))

    pieces = [piece for d in deltas for piece in d.tool_calls]
    assert [(p.index, p.id, p.name) for p in pieces] == [
        (0, "call_0_0", "weather"),
        (1, "call_0_1", "time"),
    ]
    assert pieces[0].arguments == '{"city":"Oslo","units":{"temp":"C"}}'
    assert response.tool_calls == (
        ToolCall(id="call_0_0", name="weather", arguments={"city": "Oslo", "units": {"temp": "C"}}),
        ToolCall(id="call_0_1", name="time", arguments={}),
    )
    assert (response.content, response.finish_reason) == ("Checking.", "tool_calls")


# ---------------------------------------------------------------- embeddings


async def test_embeddings_are_one_batch_request_with_vectors_in_order(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    inputs = ("bees make honey", "wasps do not", "")

    response = await provider.embed(
        EmbedRequest(model="gemini/text-embedding-004", inputs=inputs, dimensions=4)
    )

    (sent,) = server.requests
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert server.bodies()[0]["requests"] == [
        {
            "model": "models/text-embedding-004",
            "content": {"role": "user", "parts": [{"text": text}]},
            "outputDimensionality": 4,
        }
        for text in inputs
    ]
    assert response.vectors == tuple(tuple(vector(text, 4)) for text in inputs)
    assert response.model == "gemini/text-embedding-004"
    # batchEmbedContents reports no tokens: about four characters a token.
    assert response.usage.input_tokens == 4 + 3 + 0


# ---------------------------------------------------------------- failures


async def test_a_server_error_is_retryable_and_quotes_gemini(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.error(503, "The model is overloaded. Please try again later.")

    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())

    assert str(caught.value) == (
        "gemini/gemini-2.5-flash: 503 Service Unavailable: "
        "The model is overloaded. Please try again later."
    )
    assert (caught.value.status, caught.value.retry_after) == (503, None)
    assert len(server.requests) == 1


async def test_rate_limits_are_retryable_after_the_retry_after_header(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.wire.fail(429, retry_after=3)

    with pytest.raises(RetryableError) as caught:
        await provider.chat(ask())

    assert str(caught.value) == (
        "gemini/gemini-2.5-flash: 429 Too Many Requests: injected failure (retry after 3s)"
    )
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)
    assert len(server.requests) == 1


async def test_rate_limits_take_the_retry_delay_from_googles_retry_info(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.error(
        429,
        "You exceeded your current quota.",
        details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "24s"}],
    )

    with pytest.raises(RetryableError) as caught:
        await provider.stream(ask()).__anext__()

    assert caught.value.retry_after == 24.0
    assert "You exceeded your current quota. (retry after 24s)" in str(caught.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 404])
async def test_client_errors_are_terminal(
    server: FakeGemini, provider: GeminiProvider, status: int
) -> None:
    server.error(status, "models/gemini-9 is not found for API version v1beta")

    with pytest.raises(StepFailed) as caught:
        await provider.chat(ask())

    assert caught.value.status == status
    assert "models/gemini-9 is not found for API version v1beta" in str(caught.value)
    assert len(server.requests) == 1


async def test_a_wrong_key_is_terminal_and_never_shown(server: FakeGemini) -> None:
    wrong = "AIza-wrong-key-9876543210"
    gemini = GeminiProvider(
        ProviderConfig(name="gemini", kind="gemini", base_url=server.url, api_key=wrong)
    )
    try:
        with pytest.raises(StepFailed) as caught:
            await gemini.chat(ask())
    finally:
        await gemini.aclose()

    assert str(caught.value) == (
        "gemini/gemini-2.5-flash: 400 Bad Request: API key not valid. Please pass a valid API key."
    )
    assert server.requests[0].headers["x-goog-api-key"] == wrong
    assert wrong not in str(caught.value)


async def test_a_forbidden_answer_is_terminal(server: FakeGemini, provider: GeminiProvider) -> None:
    server.wire.fail(403)

    with pytest.raises(StepFailed, match="403 Forbidden: injected failure") as caught:
        await provider.embed(EmbedRequest(model="gemini/text-embedding-004", inputs=("x",)))

    assert caught.value.status == 403
    assert len(server.requests) == 1


async def test_a_dropped_connection_is_retryable_and_tried_once(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.wire.drop()

    with pytest.raises(RetryableError, match=r"^gemini/gemini-2.5-flash: connection failed: "):
        await provider.chat(ask())

    assert len(server.requests) == 1


async def test_a_stream_cut_in_the_middle_is_retryable_and_tried_once(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply("one two three four five six")
    server.wire.drop_mid_stream()
    received: list[ChatDelta] = []

    with pytest.raises(RetryableError, match="connection failed"):
        await drain(provider.stream(ask()), received)

    assert [d.text for d in received] == ["one two "]
    assert len(server.requests) == 1


async def test_an_error_event_in_the_middle_of_a_stream_is_translated(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.error(500, "An internal error has occurred.", mid_stream=True)

    with pytest.raises(
        RetryableError,
        match=re.escape("500 Internal Server Error: An internal error has occurred."),
    ):
        await drain(provider.stream(ask()), [])

    assert len(server.requests) == 1


async def test_a_stream_that_ends_without_a_finish_reason_is_retryable(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.reply("cut short", finish_reason="")

    with pytest.raises(RetryableError, match="the stream ended before it finished"):
        await drain(provider.stream(ask()), [])


async def test_the_key_is_masked_even_when_the_upstream_quotes_it(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    server.error(400, f"API key {KEY} is not allowed for this model")

    with pytest.raises(StepFailed) as caught:
        await provider.chat(ask())

    assert str(caught.value) == (
        "gemini/gemini-2.5-flash: 400 Bad Request: API key *** is not allowed for this model"
    )


async def test_a_slow_answer_times_out_as_retryable(server: FakeGemini) -> None:
    gemini = make(server, timeout=0.2)
    server.wire.slow(0.8)
    try:
        with pytest.raises(RetryableError, match=r"no answer within 0.2s"):
            await gemini.chat(ask())
    finally:
        await gemini.aclose()

    assert len(server.requests) == 1


# ---------------------------------------------------------------- configuration


async def test_the_registry_builds_it_and_a_missing_key_is_a_config_error(
    server: FakeGemini,
) -> None:
    built = build_provider(
        ProviderConfig(name="google", kind="gemini", base_url=server.url, api_key=KEY)
    )
    try:
        assert isinstance(built, GeminiProvider)
        assert built.name == "google"
        response = await built.chat(ask(model="google/gemini-2.5-flash"))
        assert response.model == "google/gemini-2.5-flash"
    finally:
        await built.aclose()

    with pytest.raises(ConfigError, match="no API key"):
        GeminiProvider(ProviderConfig(name="gemini", kind="gemini"))


async def test_invalid_options_fail_the_step_before_sending(
    server: FakeGemini, provider: GeminiProvider
) -> None:
    with pytest.raises(StepFailed, match="invalid options"):
        await provider.chat(ask(options={"temperature": "very hot"}))
    assert server.requests == []

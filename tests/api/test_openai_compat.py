"""The OpenAI-compatible endpoints, driven by the official ``openai`` SDK against a real server.

The server is uvicorn on a loopback port; behind the gateway, offline providers play the model:
``rec/...`` is the scripted provider noting every request the gateway hands it (so tests assert
what reached the provider as well as what came back), ``fail/<kind>`` raises the gateway's
errors, ``endless/...`` streams until it is stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pydantic
import pytest
import structlog
from fastapi import FastAPI
from openai import AsyncOpenAI

from agentmill.api.app import create_app
from agentmill.config import Settings
from agentmill.errors import (
    BudgetExceeded,
    RateLimited,
    RetryableError,
    StepFailed,
    UnknownModel,
)
from agentmill.gateway import (
    CallContext,
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbedRequest,
    EmbedResponse,
    Message,
    ToolCall,
    ToolSpec,
)
from agentmill.gateway.providers.scripted import ScriptedProvider, estimate_tokens
from agentmill.observability.logging import configure_logging
from tests.servers import serving

MAX_BODY = 64 * 1024


class Recording(ScriptedProvider):
    """The scripted provider, keeping each request it was asked to answer."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.chats: list[ChatRequest] = []
        self.embeds: list[EmbedRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.chats.append(request)
        return await super().chat(request)

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        self.embeds.append(request)
        return await super().embed(request)


FAILURES: dict[str, Exception] = {
    "rate": RateLimited("limit 'key:k' is full: 10 requests per minute", retry_after=7),
    "budget": BudgetExceeded("budget 'workspace:acme' exhausted: 4.98 of 5.00 USD spent"),
    "down": RetryableError("openai/gpt-4o: 503 Service Unavailable: overloaded", status=503),
    "busy": RetryableError("openai/gpt-4o: 429 Too Many Requests", retry_after=2, status=429),
    "slow": RetryableError("openai/gpt-4o: request timed out"),
    "keys": StepFailed(
        "openai/gpt-4o: 401 Unauthorized: Incorrect API key provided: sk-proj-abcd****wxyz",
        status=401,
    ),
    "gone": StepFailed("openai/gpt-9: 404 Not Found: The model does not exist", status=404),
    "unknown": UnknownModel("unknown provider 'nope' (configured: scripted)"),
    "bug": ZeroDivisionError("division by zero"),
}


class Failing:
    """``fail/<kind>`` raises FAILURES[kind]; ``fail/midway`` streams a piece first."""

    name = "fail"

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise FAILURES[request.model_name]

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        if request.model_name == "midway":
            yield ChatDelta(text="Once upon")
            raise RetryableError("fail/midway: connection reset by peer")
        raise FAILURES[request.model_name]

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        raise FAILURES[request.model_name]

    async def aclose(self) -> None:
        return None


class Endless(Recording):
    """Streams "tick" until it is stopped, and says when it was."""

    def __init__(self) -> None:
        super().__init__("endless")
        self.sent = 0
        self.stopped = threading.Event()

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        try:
            while True:
                self.sent += 1
                yield ChatDelta(text="tick ")
                await asyncio.sleep(0.005)
        finally:
            self.stopped.set()


@dataclass
class Server:
    url: str
    app: FastAPI
    rec: Recording
    endless: Endless

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass
class Tenant:
    """A workspace with its owner and a key of each kind."""

    user_id: str
    workspace_id: str
    token: str  # the owner's login token
    key: str  # role member
    key_id: str
    viewer_key: str


@contextlib.contextmanager
def serve(database_url: str, settings: Settings | None = None) -> Iterator[Server]:
    """The API (no embedded worker) under uvicorn in a thread, on a free loopback port."""
    app = create_app(
        settings or Settings(max_body_bytes=MAX_BODY),
        database_url=database_url,
        workers=False,
    )
    with serving(app) as url:
        rec, endless = Recording("rec"), Endless()
        for provider in (rec, Failing(), endless):
            app.state.gateway.register(provider)
        yield Server(url, app, rec, endless)


def new_tenant(url: str) -> Tenant:
    with httpx.Client(base_url=f"{url}/api/v1") as http:
        email = f"ana-{uuid.uuid4().hex[:10]}@example.com"
        http.post(
            "/auth/register", json={"email": email, "name": "Ana", "password": "correct horse"}
        )
        token = http.post("/auth/login", json={"email": email, "password": "correct horse"}).json()[
            "access_token"
        ]
        auth = {"Authorization": f"Bearer {token}"}
        user = http.get("/auth/me", headers=auth).json()
        ws = http.post("/workspaces", json={"name": "Acme"}, headers=auth).json()["id"]

        def key(role: str) -> dict[str, Any]:
            body = {"workspace_id": ws, "name": role, "role": role}
            created = http.post("/api-keys", json=body, headers=auth)
            assert created.status_code == 201, created.text
            return dict(created.json())

        member, viewer = key("member"), key("viewer")
    return Tenant(
        user_id=user["id"],
        workspace_id=ws,
        token=token,
        key=member["key"],
        key_id=member["id"],
        viewer_key=viewer["key"],
    )


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("v1") / "agentmill.db"
    with serve(f"sqlite:///{path}") as server:
        yield server


@pytest.fixture(scope="module")
def postgresql_server(pg_database: str) -> Iterator[Server]:
    with serve(pg_database) as server:
        yield server


@pytest.fixture
def server(sqlite_server: Server) -> Server:
    return sqlite_server


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request: pytest.FixtureRequest) -> Server:
    """On SQLite and on PostgreSQL."""
    running: Server = request.getfixturevalue(f"{request.param}_server")
    return running


@pytest.fixture(scope="module")
def sqlite_tenant(sqlite_server: Server) -> Tenant:
    return new_tenant(sqlite_server.url)


@pytest.fixture
def tenant(sqlite_tenant: Tenant) -> Tenant:
    return sqlite_tenant


@pytest.fixture
async def client(server: Server, tenant: Tenant) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=server.base_url, api_key=tenant.key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def quick_logs() -> Iterator[None]:
    """Plain log lines: unconfigured structlog renders a bug's traceback with every local
    variable of every frame, which takes many seconds."""
    configure_logging("ERROR", json=True)
    yield
    structlog.reset_defaults()


def script(**options: Any) -> dict[str, Any]:
    """The extra_body that scripts the offline model."""
    return {"agentmill": {"options": options}}


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALLS_WEATHER = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}


async def test_a_chat_completion_reaches_the_provider_and_comes_back_in_openais_shape(
    any_server: Server,
) -> None:
    tenant = new_tenant(any_server.url)
    async with AsyncOpenAI(
        base_url=any_server.base_url, api_key=tenant.key, max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="rec/writer",
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Ada"}]},
            ],
            temperature=0.2,
            top_p=0.9,
            max_completion_tokens=50,
            stop="END",
            user="end-user-7",
            seed=3,
            extra_body=script(reply="Hello, {{ prompt }}!"),
        )
    completion = raw.parse()

    body = json.loads(raw.content)
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) > 20
    assert body["object"] == "chat.completion"
    assert abs(body["created"] - time.time()) < 600
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, Ada!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    prompt_tokens = estimate_tokens("Be brief.") + estimate_tokens("Ada")
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": estimate_tokens("Hello, Ada!"),
        "total_tokens": prompt_tokens + estimate_tokens("Hello, Ada!"),
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert completion.model == "rec/writer"
    assert completion.choices[0].message.content == "Hello, Ada!"
    sent = any_server.rec.chats[-1]
    assert sent.model == "rec/writer"
    assert sent.messages == (
        Message(role="system", content="Be brief."),
        Message(role="user", content="Ada"),
    )
    assert (sent.temperature, sent.top_p, sent.max_tokens, sent.stop) == (0.2, 0.9, 50, ("END",))
    assert sent.options == {"reply": "Hello, {{ prompt }}!"}
    assert sent.context == CallContext(
        workspace_id=tenant.workspace_id, api_key_id=tenant.key_id, user_id=tenant.user_id
    )


async def test_a_streamed_completion_sends_the_answer_in_pieces_then_the_usage(
    client: AsyncOpenAI,
) -> None:
    answer = "one two three vier fünf sechs 七 八 九 🐝"
    whole = await client.chat.completions.create(
        model="rec/m",
        messages=[{"role": "user", "content": "count"}],
        extra_body=script(reply=answer),
    )

    stream = await client.chat.completions.create(
        model="rec/m",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body=script(reply=answer),
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert "".join(pieces) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")


async def test_the_stream_on_the_wire_is_server_sent_events_ending_in_done(
    server: Server, tenant: Tenant
) -> None:
    async with (
        httpx.AsyncClient(base_url=server.base_url) as http,
        http.stream(
            "POST",
            "/chat/completions",
            json={
                "model": "rec/m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
                **script(reply="a b c d"),
            },
            headers={"Authorization": f"Bearer {tenant.key}"},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]

    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(e["object"] == "chat.completion.chunk" and "usage" not in e for e in events)


async def test_a_tool_call_comes_back_with_its_arguments_as_a_json_string(
    server: Server, client: AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model="rec/m",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_body=script(reply=CALLS_WEATHER),
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id == "call_0_0"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    sent = server.rec.chats[-1]
    assert sent.tools == (
        ToolSpec(
            name="get_weather",
            description="The weather in a city.",
            parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        ),
    )
    assert sent.tool_choice == "get_weather"


class GetWeather(pydantic.BaseModel):
    city: str


class Forecast(pydantic.BaseModel):
    city: str
    days: int


async def test_streamed_tool_calls_accumulate_into_parsed_arguments(client: AsyncOpenAI) -> None:
    two_calls = {
        "tool_calls": [
            {"name": "GetWeather", "arguments": {"city": "Paris"}},
            {"name": "Forecast", "arguments": {"city": "Oslo", "days": 3}},
        ]
    }
    async with client.chat.completions.stream(
        model="rec/m",
        messages=[{"role": "user", "content": "Weather in Paris, forecast for Oslo?"}],
        tools=[openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(Forecast)],
        extra_body=script(reply=two_calls),
    ) as stream:
        done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()

    calls = final.choices[0].message.tool_calls or []
    assert [c.function.parsed_arguments for c in calls] == [
        GetWeather(city="Paris"),
        Forecast(city="Oslo", days=3),
    ]
    assert [c.id for c in calls] == ["call_0_0", "call_0_1"]
    assert [e.name for e in done] == ["GetWeather", "Forecast"]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_a_tool_result_goes_back_to_the_model_with_its_call(
    server: Server, client: AsyncOpenAI
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(
        model="rec/m",
        messages=messages,
        tools=[WEATHER_TOOL],
        extra_body=script(reply=CALLS_WEATHER),
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    # The SDK's own message object goes back as is, with its refusal/annotations fields.
    messages += [
        first.choices[0].message,
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]

    second = await client.chat.completions.create(
        model="rec/m",
        messages=messages,
        tools=[WEATHER_TOOL],
        extra_body=script(reply="It is 18C and sunny in Paris."),
    )

    assert second.choices[0].message.content == "It is 18C and sunny in Paris."
    assert server.rec.chats[-1].messages == (
        Message(role="user", content="Weather in Paris?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(ToolCall(id=call.id, name="get_weather", arguments={"city": "Paris"}),),
        ),
        Message(role="tool", content="18C and sunny", tool_call_id=call.id, name="get_weather"),
    )


async def test_a_response_format_becomes_the_response_schema(
    server: Server, client: AsyncOpenAI
) -> None:
    parsed = await client.chat.completions.parse(
        model="rec/m",
        messages=[{"role": "user", "content": "Paris, 3 days"}],
        response_format=Forecast,
    )
    sent_schema = server.rec.chats[-1].response_schema
    await client.chat.completions.create(
        model="rec/m",
        messages=[{"role": "user", "content": "any JSON"}],
        response_format={"type": "json_object"},
    )

    assert parsed.choices[0].message.parsed == Forecast(city="city (scripted)", days=1)
    assert sent_schema is not None
    assert sent_schema["properties"] == {
        "city": {"title": "City", "type": "string"},
        "days": {"title": "Days", "type": "integer"},
    }
    assert server.rec.chats[-1].response_schema == {"type": "object"}


def _float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


async def test_embeddings_as_floats_and_as_base64_are_the_same_vectors(
    server: Server, client: AsyncOpenAI
) -> None:
    texts = ["bees make honey", "honey bees"]
    floats = await client.embeddings.create(
        model="rec/embed", input=texts, dimensions=16, encoding_format="float"
    )
    decoded = await client.embeddings.create(model="rec/embed", input=texts, dimensions=16)
    raw = await client.embeddings.create(
        model="rec/embed", input="bees make honey", dimensions=16, encoding_format="base64"
    )

    assert [e.index for e in floats.data] == [0, 1]
    assert all(len(e.embedding) == 16 for e in floats.data)
    assert [e.embedding for e in decoded.data] == [_float32(e.embedding) for e in floats.data]
    packed = base64.b64decode(str(raw.data[0].embedding))
    assert list(struct.unpack("<16f", packed)) == decoded.data[0].embedding
    assert (
        floats.usage.prompt_tokens
        == floats.usage.total_tokens
        == sum(estimate_tokens(t) for t in texts)
    )
    assert floats.model == "rec/embed"
    sent = server.rec.embeds[-1]
    assert (sent.inputs, sent.dimensions) == (("bees make honey",), 16)
    assert sent.context.api_key_id is not None


async def test_models_lists_the_configured_names(
    server: Server, client: AsyncOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["openai/gpt-4o-mini", "scripted/echo"]
    monkeypatch.setattr(server.app.state.gateway, "model_names", lambda: names)

    page = await client.models.list()

    assert [(m.id, m.object, m.owned_by) for m in page.data] == [
        ("openai/gpt-4o-mini", "model", "openai"),
        ("scripted/echo", "model", "scripted"),
    ]
    assert all(isinstance(m.created, int) for m in page.data)


async def test_a_wrong_key_a_login_token_and_a_viewer_key_are_refused(
    server: Server, tenant: Tenant
) -> None:
    hello: Any = [{"role": "user", "content": "hi"}]
    wrong = "am_0123abcd_" + "x" * 43
    for secret, says in [
        (wrong, "invalid or revoked API key"),
        ("sk-not-ours", "expected an AgentMill API key"),
        (tenant.token, "take no login tokens"),
    ]:
        async with AsyncOpenAI(base_url=server.base_url, api_key=secret, max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError) as refused:
                await sdk.chat.completions.create(model="rec/m", messages=hello)
        assert (refused.value.type, refused.value.code) == (
            "authentication_error",
            "invalid_api_key",
        )
        assert says in refused.value.message
        assert secret not in refused.value.message

    async with AsyncOpenAI(
        base_url=server.base_url, api_key=tenant.viewer_key, max_retries=0
    ) as viewer:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await viewer.chat.completions.create(model="rec/m", messages=hello)
    assert denied.value.code == "permission_denied"
    assert "API key role 'viewer' may not 'model:call'" in denied.value.message


async def test_an_unknown_model_is_not_found(client: AsyncOpenAI) -> None:
    for model in ("nope/gpt", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
        assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
        assert missing.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="nope/embed", input="hi")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_value"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content", "invalid_type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
            "unsupported_value",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", None),
        ({"messages": []}, "messages", "invalid_value"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"stop": [1]}, "stop", "invalid_type"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"logprobs": True}, "logprobs", "unsupported_value"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"frobnicate": True}, "frobnicate", "unknown_parameter"),
    ],
)
async def test_a_bad_body_is_a_bad_request_naming_the_param(
    client: AsyncOpenAI, body: dict[str, Any], param: str, code: str | None
) -> None:
    request = {"model": "rec/m", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/chat/completions", body=request, cast_to=object)

    assert refused.value.param == param
    assert refused.value.type == "invalid_request_error"
    if code is not None:
        assert refused.value.code == code
    assert refused.value.status_code == 400


async def test_bad_embedding_inputs_are_bad_requests(client: AsyncOpenAI) -> None:
    for value, param in [([[1, 2, 3]], "input[0]"), ([1, 2, 3], "input"), ([], "input")]:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.embeddings.create(model="rec/embed", input=value, encoding_format="float")
        assert refused.value.param == param
    with pytest.raises(openai.BadRequestError) as missing:
        await client.post("/embeddings", body={"model": "rec/embed"}, cast_to=object)
    assert (missing.value.param, missing.value.code) == ("input", "missing_required_parameter")


async def test_transport_level_errors_are_in_openais_shape_too(
    server: Server, tenant: Tenant
) -> None:
    auth = {"Authorization": f"Bearer {tenant.key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=auth) as http:
        big = {"model": "rec/m", "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
        too_large = await http.post("/chat/completions", json=big)
        unknown = await http.post("/completions", json={})
        not_json = await http.post("/chat/completions", content=b"{nope")
        wrong_method = await http.get("/chat/completions")
        api_shape = await http.get(f"{server.url}/api/v1/nothing-here")

    assert too_large.status_code == 413
    assert too_large.json() == {
        "error": {
            "message": f"request body is larger than {MAX_BODY} bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "Invalid URL (POST /v1/completions)",
        "type": "invalid_request_error",
        "param": None,
        "code": "unknown_url",
    }
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "invalid_json"
    # The rest of the API keeps AgentMill's own shape.
    assert api_shape.status_code == 404
    assert api_shape.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "code", "retry_after"),
    [
        ("rate", 429, "rate_limit_error", "rate_limit_exceeded", "7"),
        ("budget", 402, "insufficient_quota", "budget_exceeded", None),
        ("down", 503, "api_error", "upstream_error", None),
        ("busy", 429, "rate_limit_error", "upstream_rate_limited", "2"),
        ("slow", 504, "api_error", "upstream_timeout", None),
        ("keys", 502, "api_error", "upstream_error", None),
        ("gone", 404, "invalid_request_error", "model_not_found", None),
        ("unknown", 404, "invalid_request_error", "model_not_found", None),
        ("bug", 500, "server_error", "internal_error", None),
    ],
)
async def test_gateway_failures_map_to_openai_statuses(
    client: AsyncOpenAI,
    quick_logs: None,
    kind: str,
    status: int,
    error_type: str,
    code: str,
    retry_after: str | None,
) -> None:
    for stream in (False, True):  # before the first chunk, a stream fails like a plain call
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model=f"fail/{kind}", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
        error = failed.value
        assert (error.status_code, error.type, error.code) == (status, error_type, code)
        assert error.response.headers.get("retry-after") == retry_after
        assert "sk-proj" not in error.message
        assert "Traceback" not in error.response.text
    if kind == "keys":
        assert "[redacted]" in error.message
    if kind == "bug":
        assert "division" not in error.message
        assert "request id" in error.message
    else:
        assert str(FAILURES[kind]).split(":")[0] in error.message


async def test_an_error_after_the_first_chunk_is_an_error_event(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fail/midway", messages=[{"role": "user", "content": "a story"}], stream=True
    )
    texts: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as failed:
        await read()

    assert texts == ["Once upon"]
    assert failed.value.message == "fail/midway: connection reset by peer"
    assert failed.value.body == {
        "message": "fail/midway: connection reset by peer",
        "type": "api_error",
        "param": None,
        "code": "upstream_error",
    }


async def test_the_upstream_stream_stops_when_the_client_goes(
    server: Server, tenant: Tenant
) -> None:
    server.endless.stopped.clear()
    async with (
        httpx.AsyncClient(base_url=server.base_url) as http,
        http.stream(
            "POST",
            "/chat/completions",
            json={
                "model": "endless/m",
                "messages": [{"role": "user", "content": "go"}],
                "stream": True,
            },
            headers={"Authorization": f"Bearer {tenant.key}"},
        ) as response,
    ):
        seen = 0
        async for line in response.aiter_lines():
            seen += "tick" in line
            if seen == 3:
                break  # leaving the block closes the connection mid-stream

    assert await asyncio.to_thread(server.endless.stopped.wait, 10)
    sent = server.endless.sent
    await asyncio.sleep(0.05)
    assert server.endless.sent == sent  # nothing more was asked of the upstream

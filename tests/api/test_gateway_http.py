"""The gateway end to end over HTTP: the official OpenAI client calls AgentMill's /v1, which
reaches real providers' wire protocols (local fakes), fails over between them, translates their
streams, enforces budgets and limits set over the API, and records what every call cost."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import genai_prices
import httpx
import pytest
from openai import APIStatusError, AsyncOpenAI, RateLimitError
from sqlalchemy.engine import make_url

from agentmill.config import Settings
from tests.api.test_openai_compat import Server, Tenant, new_tenant, serve
from tests.gateway.wire.anthropic_server import AnthropicFake, anthropic_server
from tests.gateway.wire.openai_server import OpenAIFake, openai_server

ANTHROPIC_KEY = "sk-ant-e2e-secret"


@dataclass
class Stack:
    server: Server
    tenant: Tenant
    oai: OpenAIFake
    claude: AnthropicFake

    def sdk(self) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.server.base_url, api_key=self.tenant.key, max_retries=0)

    def api(self, tenant: Tenant | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.server.url}/api/v1",
            headers={"Authorization": f"Bearer {(tenant or self.tenant).token}"},
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("gateway-http")
    with openai_server() as oai, anthropic_server(ANTHROPIC_KEY) as claude:
        config = folder / "agentmill.yaml"
        config.write_text(
            f"""
providers:
  local: {{kind: openai_compatible, base_url: "{oai.base_url}"}}
  claude: {{kind: anthropic, base_url: "{claude.url}", api_key_env: E2E_ANTHROPIC_KEY}}
models:
  local/gpt-4o-mini:
    price: {{input: 1.0, output: 2.0}}
    fallbacks: [claude/claude-haiku-4-5]
"""
        )
        os.environ["E2E_ANTHROPIC_KEY"] = ANTHROPIC_KEY
        # The workspaces' own providers here are wire fakes on loopback.
        settings = Settings(config=config, allow_private_provider_urls=True)
        try:
            with serve(f"sqlite:///{folder / 'agentmill.db'}", settings) as server:
                yield Stack(server, new_tenant(server.url), oai, claude)
        finally:
            del os.environ["E2E_ANTHROPIC_KEY"]


async def test_streamed_tool_calls_from_anthropic_arrive_whole_in_openai_format(
    stack: Stack,
) -> None:
    weather = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
    clock = {"zone": "Europe/Paris"}
    stack.claude.reply(
        "Let me look.",
        tool_calls=[("toolu_a", "get_weather", weather), ("toolu_b", "get_time", clock)],
    )
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("get_weather", "get_time")
    ]
    async with stack.sdk() as sdk:
        stream = await sdk.chat.completions.create(
            model="claude/claude-haiku-4-5",
            messages=[{"role": "user", "content": "Weather and time in Paris?"}],
            tools=tools,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: dict[int, list[str]] = {}
        names: dict[int, str] = {}
        argument_chunks = 0
        text, finish = [], None
        async for chunk in stream:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or []:
                    if call.function and call.function.name:
                        names[call.index] = call.function.name
                    if call.function and call.function.arguments:
                        argument_chunks += 1
                        pieces.setdefault(call.index, []).append(call.function.arguments)
    # Anthropic sent each tool's input as several partial JSON pieces; joined, each is whole.
    assert argument_chunks > 2
    assert names == {0: "get_weather", 1: "get_time"}
    assert {i: json.loads("".join(p)) for i, p in pieces.items()} == {0: weather, 1: clock}
    assert "".join(text) == "Let me look."
    assert finish == "tool_calls"
    sent = stack.claude.bodies[-1]
    assert sent["model"] == "claude-haiku-4-5"
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]


async def test_a_failing_server_fails_over_to_anthropic_and_every_try_is_accounted(
    stack: Stack,
) -> None:
    tenant = new_tenant(stack.server.url)  # a workspace of its own, for exact usage figures
    stack.oai.server.fail(503, times=2)  # both tries of the primary
    stack.claude.reply("From Claude.", input_tokens=1200, output_tokens=300)
    async with AsyncOpenAI(
        base_url=stack.server.base_url, api_key=tenant.key, max_retries=0
    ) as sdk:
        answer = await sdk.chat.completions.create(
            model="local/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.model == "claude/claude-haiku-4-5"
    assert answer.choices[0].message.content == "From Claude."

    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1200, output_tokens=300),
        "claude-haiku-4-5",
        provider_id="anthropic",
    ).total_price
    usage = await _usage_when(stack, tenant, lambda u: u["total"]["calls"] >= 3)
    lines = {line["key"]: line for line in usage["by_model"]}
    assert lines["local/gpt-4o-mini"]["failed_calls"] == 2
    assert lines["claude/claude-haiku-4-5"]["input_tokens"] == 1200
    assert Decimal(lines["claude/claude-haiku-4-5"]["cost"]) == expected
    assert usage["total"]["calls"] == 3
    with stack.api(tenant) as api:  # the workspace's own calls
        health = api.get("/providers/health", params={"workspace": tenant.workspace_id}).json()
    local = next(m for m in health["models"] if m["provider"] == "local")
    assert local["consecutive_failures"] == 2
    assert local["error_rate"] > 0


async def _usage_when(stack: Stack, tenant: Tenant, ready: object) -> dict:  # type: ignore[type-arg]
    """Usage records are written in batches off the call's path: wait for them."""
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(
        base_url=f"{stack.server.url}/api/v1", headers={"Authorization": f"Bearer {tenant.token}"}
    ) as api:
        while True:
            usage = (await api.get(f"/workspaces/{tenant.workspace_id}/usage")).json()
            if ready(usage) or time.monotonic() > deadline:  # type: ignore[operator]
                return dict(usage)
            await asyncio.sleep(0.05)


async def test_a_rate_limit_set_over_the_api_answers_429_with_retry_after(stack: Stack) -> None:
    tenant = new_tenant(stack.server.url)  # a fresh workspace: its own limits and budgets
    api = httpx.AsyncClient(
        base_url=f"{stack.server.url}/api/v1", headers={"Authorization": f"Bearer {tenant.token}"}
    )
    async with api:
        created = await api.post(
            f"/workspaces/{tenant.workspace_id}/rate-limits",
            json={"scope": "api_key", "subject_id": tenant.key_id, "requests_per_minute": 3},
        )
        assert created.status_code == 201, created.text
    async with AsyncOpenAI(
        base_url=stack.server.base_url, api_key=tenant.key, max_retries=0
    ) as sdk:
        answers = []
        for _ in range(3):
            answers.append(
                await sdk.chat.completions.create(
                    model="scripted/echo", messages=[{"role": "user", "content": "hi"}]
                )
            )
        with pytest.raises(RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="scripted/echo", messages=[{"role": "user", "content": "hi"}]
            )
    assert len(answers) == 3
    assert caught.value.status_code == 429
    assert 0 < int(caught.value.response.headers["retry-after"]) <= 60
    assert "3 requests per minute" in caught.value.message


async def test_a_budget_set_over_the_api_refuses_calls_once_spent(stack: Stack) -> None:
    tenant = new_tenant(stack.server.url)
    async with httpx.AsyncClient(
        base_url=f"{stack.server.url}/api/v1", headers={"Authorization": f"Bearer {tenant.token}"}
    ) as api:
        created = await api.post(
            f"/workspaces/{tenant.workspace_id}/budgets",
            json={"scope": "workspace", "limit_usd": "0.0002", "period": "daily"},
        )
        assert created.status_code == 201, created.text
    # local/gpt-4o-mini: 2 USD per million output tokens; max_tokens 40 reserves 0.00008 and
    # a bit of input, so two calls fit and the third would not.
    async with AsyncOpenAI(
        base_url=stack.server.base_url, api_key=tenant.key, max_retries=0
    ) as sdk:
        for _ in range(2):
            stack.oai.reply("ok", prompt_tokens=5, completion_tokens=40)
            await sdk.chat.completions.create(
                model="local/gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=40,
            )
        with pytest.raises(APIStatusError) as caught:
            await sdk.chat.completions.create(
                model="local/gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=40,
            )
    assert caught.value.status_code == 402
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "budget_exceeded"
    assert "workspace daily budget" in body["message"]


async def test_provider_keys_never_reach_the_database_or_the_answers(stack: Stack) -> None:
    path = Path(str(make_url(stack.server.app.state.db.url).database))
    assert ANTHROPIC_KEY.encode() not in await asyncio.to_thread(path.read_bytes)
    with stack.api() as api:
        health = api.get("/providers/health").text
    assert ANTHROPIC_KEY not in health


async def test_a_workspace_uses_its_own_provider_and_key(stack: Stack) -> None:
    tenant = new_tenant(stack.server.url)
    async with httpx.AsyncClient(
        base_url=f"{stack.server.url}/api/v1", headers={"Authorization": f"Bearer {tenant.token}"}
    ) as api:
        for name, kind in (("mine", "openai"), ("unpriced", "openai_compatible")):
            created = await api.post(
                f"/workspaces/{tenant.workspace_id}/providers",
                json={
                    "name": name,
                    "kind": kind,
                    "base_url": stack.oai.base_url,
                    "api_key": "sk-workspace-own",
                },
            )
            assert created.status_code == 201, created.text
    async with AsyncOpenAI(
        base_url=stack.server.base_url, api_key=tenant.key, max_retries=0
    ) as sdk:
        answer = await sdk.chat.completions.create(
            model="mine/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.model == "mine/gpt-4o-mini"
        assert stack.oai.server.requests[-1].headers["authorization"] == "Bearer sk-workspace-own"
        with pytest.raises(APIStatusError) as caught:
            await sdk.chat.completions.create(
                model="unpriced/llama-3-8b", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 400
    assert "no price known for model 'unpriced/llama-3-8b'" in caught.value.message
    # Another workspace does not see this one's providers.
    async with stack.sdk() as sdk:
        with pytest.raises(APIStatusError) as other:
            await sdk.chat.completions.create(
                model="mine/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
    assert other.value.status_code == 404

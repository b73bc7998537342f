"""Gateway overhead: latency added over a direct call to the same local upstream, and requests/s.

The upstream is the OpenAI wire fake (tests/gateway/wire/openai_server.py) in its own process.
Two paths, each at 1 and 32 concurrent clients, with budgets, a rate limit and accounting on:

- HTTP: an `agentmill api` process; requests to its /v1/chat/completions vs the same requests
  straight to the upstream, both sent by a raw keep-alive HTTP/1.1 load generator (like wrk), so
  the client measures and costs little.
- in-process: `Gateway.chat` with the OpenAI provider vs the official `openai` client calling the
  upstream directly, in this process.

Added latency = gateway path minus direct path, per percentile. Timings are taken at the client.

    python bench/gateway.py [--seconds 5] [--path http|inprocess|all]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.api import free_port, raw_request  # noqa: E402

BODY = {
    "model": "local/gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 50,
}
UPSTREAM = """
import sys, threading
from tests.gateway.wire.openai_server import openai_server
with openai_server() as fake:
    print(fake.base_url, flush=True)
    threading.Event().wait()
"""


def start_upstream() -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def write_config(folder: Path, upstream: str) -> Path:
    config = folder / "agentmill.yaml"
    config.write_text(
        "providers:\n"
        f"  local: {{kind: openai_compatible, base_url: '{upstream}'}}\n"
        "models:\n"
        "  local/gpt-4o-mini: {price: {input: 0.15, output: 0.6}}\n"
    )
    return config


def start_api(folder: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {
        **os.environ,
        "AGENTMILL_DATABASE_URL": f"sqlite:///{folder / 'agentmill.db'}",
        "AGENTMILL_CONFIG": str(config),
        "AGENTMILL_SECRET_KEY": "bench-secret",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentmill", "api", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, base


def tenant_with_limits(base: str) -> str:
    """An account, a workspace with a budget and a rate limit far above the load, an API key."""
    with httpx.Client(base_url=f"{base}/api/v1") as http:
        account = {
            "email": "bench@example.com",
            "name": "Bench",
            "password": "gateway load test 2026",
        }
        http.post("/auth/register", json=account)
        login = {"email": account["email"], "password": account["password"]}
        token = http.post("/auth/login", json=login).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        ws = http.post("/workspaces", json={"name": "Bench"}).json()["id"]
        http.post(f"/workspaces/{ws}/budgets", json={"scope": "workspace", "limit_usd": "1000"})
        http.post(f"/workspaces/{ws}/budgets", json={"scope": "api_key", "limit_usd": "1000"})
        limit = {"scope": "api_key", "requests_per_minute": 10_000_000}
        http.post(f"/workspaces/{ws}/rate-limits", json=limit)
        key = http.post("/api-keys", json={"workspace_id": ws, "name": "bench", "role": "member"})
        return str(key.json()["key"])


async def http_load(base: str, path: str, key: str, clients: int, seconds: float) -> list[float]:
    request = raw_request(base, key, "POST", path, BODY)
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                answer = await reader.readexactly(length)
                latencies.append((time.perf_counter() - started) * 1000)
                assert head.startswith(b"HTTP/1.1 200"), head + answer
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


async def call_load(
    call: Callable[[], Awaitable[object]], clients: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def figures(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "rps": len(ordered) / seconds,
    }


def row(path: str, clients: int, direct: dict[str, float], gateway: dict[str, float]) -> None:
    print(
        f"| {path} | {clients} | {direct['p50']:.2f} | {gateway['p50']:.2f} | "
        f"{gateway['p50'] - direct['p50']:+.2f} | {direct['p99']:.2f} | {gateway['p99']:.2f} | "
        f"{gateway['p99'] - direct['p99']:+.2f} | {direct['rps']:,.0f} | {gateway['rps']:,.0f} |",
        flush=True,
    )


async def bench_http(upstream: str, folder: Path, seconds: float) -> None:
    proc, base = start_api(folder, write_config(folder, upstream))
    try:
        key = tenant_with_limits(base)
        up = upstream.removesuffix("/v1")
        await http_load(base, "/v1/chat/completions", key, 4, 1.0)  # warm up
        for clients in (1, 32):
            direct = await http_load(up, "/v1/chat/completions", "x", clients, seconds)
            through = await http_load(base, "/v1/chat/completions", key, clients, seconds)
            row("HTTP /v1", clients, figures(direct, seconds), figures(through, seconds))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def bench_inprocess(upstream: str, folder: Path, seconds: float) -> None:
    from openai import AsyncOpenAI

    from agentmill.gateway import CallContext, ChatRequest, Gateway, Message
    from agentmill.gateway.budgets import Budget, BudgetPeriod, BudgetScope, MemoryBudgetStore
    from agentmill.gateway.config import load_gateway_config
    from agentmill.gateway.policy import CallerLimit, StaticPolicies, WorkspacePolicy
    from agentmill.gateway.ratelimits import RateLimiter
    from agentmill.store.db import Database
    from agentmill.store.gateway_policies import UsageRecorder
    from agentmill.store.migrate import upgrade

    db = Database(f"sqlite:///{folder / 'inprocess.db'}")
    await upgrade(db)
    await db.start()
    budget = Budget(
        id="b",
        workspace_id="ws",
        scope=BudgetScope.WORKSPACE,
        subject_id=None,
        period=BudgetPeriod.MONTHLY,
        limit=Decimal(1000),
    )
    policy = WorkspacePolicy(
        budgets=(budget,),
        limits=(CallerLimit(scope="api_key", requests_per_minute=10_000_000),),
    )
    recorder = UsageRecorder(db)
    gateway = Gateway(
        config=load_gateway_config(write_config(folder, upstream)),
        policies=StaticPolicies({"ws": policy}),
        limiter=RateLimiter("memory://"),
        budgets=MemoryBudgetStore(),
        recorder=recorder,
    )
    request = ChatRequest(
        model="local/gpt-4o-mini",
        messages=(Message(role="user", content="Say hello in five words."),),
        max_tokens=50,
        context=CallContext(workspace_id="ws", api_key_id="key"),
    )
    sdk = AsyncOpenAI(base_url=upstream, api_key="x", max_retries=0)

    async def direct() -> object:
        return await sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello in five words."}],
            max_tokens=50,
        )

    async def through() -> object:
        return await gateway.chat(request)

    try:
        await call_load(through, 4, 1.0)  # warm up (connections, price lookup)
        for clients in (1, 32):
            plain = await call_load(direct, clients, seconds)
            gated = await call_load(through, clients, seconds)
            row("in-process", clients, figures(plain, seconds), figures(gated, seconds))
    finally:
        await sdk.close()
        await gateway.aclose()  # writes the usage records still pending
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--path", choices=["http", "inprocess", "all"], default="all")
    args = parser.parse_args()
    upstream_proc, upstream = start_upstream()
    print(
        "| path | clients | direct p50 ms | gateway p50 ms | added p50 | direct p99 ms | "
        "gateway p99 ms | added p99 | direct req/s | gateway req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.path in ("http", "all"):
                await bench_http(upstream, Path(tmp), args.seconds)
            if args.path in ("inprocess", "all"):
                await bench_inprocess(upstream, Path(tmp), args.seconds)
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(timeout=20)
    print(json.dumps({"note": "added = gateway minus direct, measured at the client"}))


if __name__ == "__main__":
    asyncio.run(main())

"""API latency and throughput against a running `agentmill up`, on loopback.

For `GET /runs/{id}` and for starting runs, at 1 and 32 concurrent clients: p50/p95/p99 latency
and requests per second. Starts its own server (SQLite, then PostgreSQL) on a free port.

    python bench/api.py [--backend sqlite|postgresql|all] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

PG_ADMIN = "postgresql://postgres@127.0.0.1/test"
FLOW = "name: bench-api\nsteps:\n  - id: a\n    value: ok\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    database_url: str, workdir: Path
) -> tuple[subprocess.Popen[str], str, dict[str, str]]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentmill", "up", "--port", str(port), "--db", database_url],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        key, sep, value = line.strip().partition(":")
        if sep and key in ("workspace", "API key"):
            printed[key] = value.strip()
        if "Press Ctrl-C" in line:
            break
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, base, printed


def raw_request(base: str, key: str, method: str, path: str, body: object) -> bytes:
    """One HTTP/1.1 keep-alive request, built once and sent as is."""
    payload = b"" if body is None else json.dumps(body).encode()
    host = base.removeprefix("http://")
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def measure(
    base: str, key: str, path: str, method: str, body: object, clients: int, seconds: float
) -> dict[str, float]:
    # The load generator speaks HTTP/1.1 on raw keep-alive sockets, as wrk does: on a 2-core
    # machine an httpx client costs as much CPU as the server and would measure itself.
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    request = raw_request(base, key, method, path, body)
    host, port = base.removeprefix("http://").split(":")

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
                assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")), head + answer
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    return {
        "p50": statistics.median(ordered),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "rps": len(ordered) / elapsed,
    }


async def drained(base: str) -> None:
    """Wait until the embedded worker has nothing queued or running."""
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(600):
            queue = (await http.get("/health")).json()["queue"]
            if queue["ready"] == queue["running"] == 0:
                return
            await asyncio.sleep(0.1)


async def bench_backend(
    name: str, database_url: str, seconds: float
) -> list[tuple[str, str, int, dict[str, float]]]:
    workdir = Path(tempfile.mkdtemp(prefix="agentmill-bench-api-"))
    proc, base, printed = start_server(database_url, workdir)
    rows = []
    try:
        key, ws = printed["API key"], printed["workspace"]
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            workflow = (
                await http.post(
                    f"/api/v1/workspaces/{ws}/workflows",
                    content=FLOW,
                    headers={"Content-Type": "application/yaml"},
                )
            ).json()
            run = (await http.post(f"/api/v1/workflows/{workflow['id']}/runs", json={})).json()
        get_run = ("GET /runs/{id}", "GET", f"/api/v1/runs/{run['id']}", None)
        start_run = ("POST …/runs", "POST", f"/api/v1/workflows/{workflow['id']}/runs", {})
        for what, method, path, body in (get_run, start_run):
            for clients in (1, 32):
                await drained(base)  # runs started by an earlier phase must not load this one
                rows.append(
                    (
                        name,
                        what,
                        clients,
                        await measure(base, key, path, method, body, clients, seconds),
                    )
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows = []
    if args.backend in ("sqlite", "all"):
        rows += await bench_backend(
            "sqlite", f"sqlite:///{tempfile.mkdtemp()}/bench.db", args.seconds
        )
    if args.backend in ("postgresql", "all"):
        import asyncpg

        name = f"agentmill_bench_api_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        try:
            rows += await bench_backend(
                "postgresql", f"postgresql://postgres@127.0.0.1/{name}", args.seconds
            )
        finally:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    print(
        f"{'backend':<11} {'request':<16} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}"
    )
    for backend, what, clients, m in rows:
        print(
            f"{backend:<11} {what:<16} {clients:>7} {m['p50']:>8.2f} {m['p95']:>8.2f} {m['p99']:>8.2f} {m['rps']:>8.0f}"
        )
    print("target (DESIGN.md): GET /runs/{id} p95 ≤ 20 ms under load")


if __name__ == "__main__":
    asyncio.run(main())

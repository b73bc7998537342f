"""Distributed mode on PostgreSQL: `agentmill worker` processes sharing one queue.

1. Throughput: steps/s with 1, 2 and 4 workers (zero-latency scripted model). The workers start
   first and wait, idle, until every one has reported in; then the runs are created in one
   transaction, so all their steps are ready at once. The clock runs from the first step
   started to the last step finished (event times). (A worker process takes about 2 s of CPU
   to start: started after the runs, the later workers spent it while the first already
   worked, which on 2 cores put 4 workers' rate below 2 workers'.)
2. Queue lag: runs arrive at a steady rate while 2 workers run them; lag is a queued step's
   ``step.started`` time minus its ``step.queued`` time.
3. 10,000 runs at once, each waiting on a 1 s scripted call, held by one worker process: wall
   time from the first start to the last finish, and the worker's peak RSS.

Each measure runs with the database's own queue (``sql``) and with Redis Streams (``redis``).

    python bench/distributed.py [--queue sql|redis|all] [--runs 300] [--waiting 10000]
                                [--skip-waiting] [--repeat 3]

Throughput and the waiting measure run ``--repeat`` times each; the table shows the median and
the range (one run on 2 shared cores moves by a fifth or more).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.store.db import Database, Tx
from agentmill.store.migrate import upgrade
from agentmill.store.models import events
from agentmill.store.workflows import VersionRef

PG_ADMIN = "postgresql://postgres@127.0.0.1/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUES = {"sql": None, "redis": REDIS_URL}
PARALLEL = """
name: bench-parallel
agents:
  m: {model: scripted/bench, options: {reply: ok, latency: %s}}
steps:
%s
"""


def parallel_spec(width: int, latency: float = 0.0) -> str:
    steps = "\n".join(f"  - {{id: s{i}, agent: m, prompt: '{i}'}}" for i in range(width))
    return PARALLEL % (latency, steps)


async def create_database() -> str:
    name = f"agentmill_bench_dist_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"postgresql://postgres@127.0.0.1/{name}"
    await upgrade(Database(url))
    return url


async def drop_database(url: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await admin.close()


def start_workers(
    url: str, count: int, concurrency: int, logs: Path, queue: str
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "AGENTMILL_DATABASE_URL": url, "AGENTMILL_POLL_INTERVAL": "0.5"}
    if QUEUES[queue]:
        env["AGENTMILL_QUEUE_URL"] = str(QUEUES[queue])
    procs = []
    for i in range(count):
        with (logs / f"w{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "agentmill",
                        "worker",
                        "--name",
                        f"w{i}",
                        "--concurrency",
                        str(concurrency),
                        "--grace",
                        "1",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def event_rows(engine: Engine, types: tuple[str, ...]) -> list[dict[str, Any]]:
    def read(tx: Tx) -> list[dict[str, Any]]:
        query = events.select().where(events.c.type.in_(types)).order_by(events.c.id)
        return [dict(r._mapping) for r in tx.conn.execute(query)]

    return await engine.db.read(read)


async def wait_count(engine: Engine, query: str, count: int, within: float, every: float) -> bool:
    """Whether the count ``query`` reads reaches ``count`` within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await engine.db.read(lambda tx: tx.conn.exec_driver_sql(query).scalar())
        if found >= count:
            return True
        await asyncio.sleep(every)
    return False


async def wait_finished(engine: Engine, count: int, within: float) -> None:
    query = "SELECT count(*) FROM runs WHERE status IN ('COMPLETED', 'FAILED')"
    if not await wait_count(engine, query, count, within, every=0.2):
        raise TimeoutError(f"runs did not finish within {within:g}s")


async def wait_ready(engine: Engine, count: int, within: float = 60) -> None:
    """Until ``count`` workers have reported in (each does just before it takes work)."""
    query = "SELECT count(*) FROM workers WHERE stopped_at IS NULL"
    if not await wait_count(engine, query, count, within, every=0.1):
        raise TimeoutError(f"{count} workers did not start within {within:g}s")
    await asyncio.sleep(0.5)  # the last one's queue starts listening


async def queue_runs(engine: Engine, version: VersionRef, count: int) -> None:
    """``count`` runs created in one transaction: their steps all become ready together."""

    def create(tx: Tx) -> None:
        for _ in range(count):
            engine.transitions.create_run(
                tx, workflow_id=version.workflow_id, version_id=version.version_id, inputs={}
            )

    await engine.db.write(create)


async def with_engine(url: str) -> Engine:
    db = Database(url, pool_size=20)
    await db.start()
    return Engine(db)


async def throughput(workers: int, runs: int, logs: Path, queue: str) -> float:
    url = await create_database()
    engine = await with_engine(url)
    try:
        version = await engine.register(load_workflow_text(parallel_spec(10)))
        procs = start_workers(url, workers, 200, logs, queue)
        try:
            await wait_ready(engine, workers)
            await queue_runs(engine, version, runs)
            await wait_finished(engine, runs, within=600)
        finally:
            stop_workers(procs)
        rows = await event_rows(engine, ("step.started", "step.succeeded"))
        first = min(r["ts"] for r in rows if r["type"] == "step.started")
        last = max(r["ts"] for r in rows if r["type"] == "step.succeeded")
        steps = sum(r["type"] == "step.succeeded" for r in rows)
        return steps / (last - first).total_seconds()
    finally:
        await engine.db.close()
        await drop_database(url)


async def lag(seconds: float, rate: float, logs: Path, queue: str) -> tuple[float, float, int]:
    url = await create_database()
    engine = await with_engine(url)
    try:
        version = await engine.register(load_workflow_text(parallel_spec(4, latency=0.01)))
        procs = start_workers(url, 2, 200, logs, queue)
        try:
            await wait_ready(engine, 2)  # the workers are up and idle
            started = 0
            begin = time.monotonic()
            while time.monotonic() - begin < seconds:
                await engine.start_run(version, {})
                started += 1
                await asyncio.sleep(max(0.0, begin + started / rate - time.monotonic()))
            await wait_finished(engine, started, within=120)
        finally:
            stop_workers(procs)
        rows = await event_rows(engine, ("step.queued", "step.started"))
        queued: dict[tuple[str, str], datetime] = {}
        lags = []
        for row in rows:
            key = (row["run_id"], row["step_key"])
            if row["type"] == "step.queued":
                queued[key] = row["ts"]
            elif key in queued and row["attempt"] == 1:
                lags.append((row["ts"] - queued[key]).total_seconds() * 1000)
        lags.sort()
        return statistics.median(lags), lags[int(len(lags) * 0.95)], len(lags)
    finally:
        await engine.db.close()
        await drop_database(url)


async def waiting(runs: int, logs: Path, queue: str) -> tuple[float, float]:
    url = await create_database()
    engine = await with_engine(url)
    try:
        version = await engine.register(load_workflow_text(parallel_spec(1, latency=1.0)))
        for _ in range(runs):
            await engine.start_run(version, {})
        (proc,) = start_workers(url, 1, runs, logs, queue)
        try:
            await wait_finished(engine, runs, within=600)
            rss = peak_rss_mib(proc.pid)
        finally:
            stop_workers([proc])
        rows = await event_rows(engine, ("step.started", "step.succeeded"))
        first = min(r["ts"] for r in rows if r["type"] == "step.started")
        last = max(r["ts"] for r in rows if r["type"] == "step.succeeded")
        return (last - first).total_seconds(), rss
    finally:
        await engine.db.close()
        await drop_database(url)


def show(measure: str, values: list[float], form: str = "{:,.0f}") -> None:
    """One table row: the median, and the range when measured more than once."""
    spread = (
        "" if len(values) == 1 else f"  ({form.format(min(values))}–{form.format(max(values))})"
    )
    print(f"{measure:<44} {form.format(statistics.median(values)):>10}{spread}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="runs of 10 parallel steps")
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--skip-waiting", action="store_true")
    parser.add_argument("--queue", choices=["sql", "redis", "all"], default="all")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="times each throughput and waiting measure runs (their median is shown, with "
        "the lowest and highest: on 2 shared cores one run moves by a fifth or more)",
    )
    args = parser.parse_args()
    queues = ["sql", "redis"] if args.queue == "all" else [args.queue]
    logs = Path(tempfile.mkdtemp(prefix="agentmill-bench-dist-"))
    print(f"PostgreSQL, `agentmill worker` subprocesses; worker logs in {logs}", flush=True)
    print(f"{'measure':<44} {'median':>10}  (lowest–highest of {args.repeat})")
    for queue in queues:
        for count in (1, 2, 4):
            rates = [await throughput(count, args.runs, logs, queue) for _ in range(args.repeat)]
            show(f"{queue}: steps/s, {count} worker(s)", rates, "{:,.0f}")
        p50, p95, samples = await lag(10, 20, logs, queue)
        show(f"{queue}: ready→started lag p50 ms", [p50], "{:.1f}")
        show(f"{queue}: lag p95 ms ({samples} steps)", [p95], "{:.1f}")
        if not args.skip_waiting:
            waits = [await waiting(args.waiting, logs, queue) for _ in range(args.repeat)]
            show(f"{queue}: {args.waiting} waiting runs, wall s", [w for w, _ in waits], "{:.2f}")
            show(f"{queue}: {args.waiting} waiting, worker peak RSS MiB", [r for _, r in waits])
    print("targets (DESIGN.md): ≥ 2,000 steps/s with 4 workers; lag p95 ≤ 50 ms;")
    print("                     10,000 waiting runs in ≤ 10 s wall under 1 GiB")


if __name__ == "__main__":
    asyncio.run(main())

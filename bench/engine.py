"""Engine overhead: a 200-step chain and a 100-wide fan-out with a zero-latency scripted model.

Per-step overhead is wall time divided by steps; every step is durable (its transition is
committed before the next starts). Prints a table; ``--json`` for machine output.

    python bench/engine.py [--backend sqlite|postgresql|all] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from agentmill.domain.validation import load_workflow_text
from agentmill.engine.engine import Engine
from agentmill.observability.logging import configure_logging
from agentmill.store.db import Database
from agentmill.store.migrate import upgrade

PG_ADMIN = "postgresql://postgres@127.0.0.1/test"


def chain_spec(length: int) -> str:
    lines = [
        "name: bench-chain",
        "agents:",
        "  m: {model: scripted/bench, options: {reply: ok}}",
        "steps:",
    ]
    for i in range(length):
        needs = f"\n    needs: [s{i - 1}]" if i else ""
        lines.append(f"  - id: s{i}{needs}\n    agent: m\n    prompt: step {i}")
    return "\n".join(lines)


def fanout_spec(width: int) -> str:
    lines = [
        "name: bench-fanout",
        "agents:",
        "  m: {model: scripted/bench, options: {reply: ok}}",
        "steps:",
    ]
    lines.append("  - id: start\n    value: go")
    for i in range(width):
        lines.append(f"  - id: f{i}\n    needs: [start]\n    agent: m\n    prompt: item {i}")
    lines.append(
        "  - id: join\n    needs: ["
        + ", ".join(f"f{i}" for i in range(width))
        + "]\n    value: done"
    )
    return "\n".join(lines)


async def measure(url: str, text: str, steps: int, repeat: int) -> tuple[list[float], list[float]]:
    """Per-step milliseconds, two ways: wall time around the run (including this harness
    noticing the end and stopping its worker), and the run's own stored created→finished time."""
    db = Database(url)
    await upgrade(db)
    await db.start()
    engine = Engine(db)
    try:
        ref = await engine.register(load_workflow_text(text))
        wall, stored = [], []
        for i in range(repeat + 1):
            run_id = await engine.start_run(ref, {})
            started = time.perf_counter()
            run = await engine.run_until_settled(run_id)
            elapsed = time.perf_counter() - started
            assert run.status == "COMPLETED", run.error
            assert run.finished_at is not None
            if i:  # the first run warms caches
                wall.append(elapsed / steps * 1000)
                stored.append((run.finished_at - run.created_at).total_seconds() / steps * 1000)
        return wall, stored
    finally:
        await db.close()


async def pg_database() -> str:
    import asyncpg

    name = f"agentmill_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1/test")
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name


async def drop_pg(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1/test")
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logging("WARNING")
    rows = []
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    for backend in backends:
        for label, text, steps, target in (
            ("chain x200", chain_spec(200), 200, 0.3),
            ("fan-out x100", fanout_spec(100), 102, 0.15),
        ):
            if backend == "sqlite":
                folder = tempfile.mkdtemp(prefix="agentmill-bench-")
                url = f"sqlite:///{Path(folder) / 'bench.db'}"
                wall, stored = await measure(url, text, steps, args.repeat)
            else:
                name = await pg_database()
                try:
                    wall, stored = await measure(
                        f"postgresql://postgres@127.0.0.1/{name}", text, steps, args.repeat
                    )
                finally:
                    await drop_pg(name)
            median = statistics.median(wall)
            rows.append(
                {
                    "backend": backend,
                    "workflow": label,
                    "ms_per_step_median": round(median, 4),
                    "ms_per_step_best": round(min(wall), 4),
                    "ms_per_step_in_run": round(statistics.median(stored), 4),
                    "steps_per_s": round(1000 / median),
                    "target_ms": target if backend == "sqlite" else None,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'backend':<11} {'workflow':<13} {'ms/step wall (median)':>22} {'best':>7} "
        f"{'in-run':>7} {'steps/s':>8} {'target':>7}"
    )
    for r in rows:
        target = f"≤{r['target_ms']}" if r["target_ms"] else "-"
        print(
            f"{r['backend']:<11} {r['workflow']:<13} {r['ms_per_step_median']:>22.3f} "
            f"{r['ms_per_step_best']:>7.3f} {r['ms_per_step_in_run']:>7.3f} "
            f"{r['steps_per_s']:>8} {target:>7}"
        )
    print(
        "wall: from start_run to run_until_settled returning, per step (includes this harness);"
        " in-run: the run's stored created→finished time, per step. Every step is durable."
    )


if __name__ == "__main__":
    asyncio.run(main())

"""Memory search by meaning: ranking in PostgreSQL with pgvector vs in the process.

One workspace holds N memories with 1,536-dimension embeddings (the size of OpenAI's
text-embedding-3-small); another workspace holds as many, which search must skip. Each query is
a `MemoryStore.search` minus the embedding call (the vector is given), timed end to end:

- in-process: the machine's PostgreSQL, no pgvector; the workspace's vectors are loaded as
  JSON and ranked in Python (also what SQLite does).
- pgvector: the PostgreSQL 16 with pgvector that the tests start (tests/pgvector_server.py);
  the database ranks with `<=>` and returns the top 5.

    python bench/memory.py [--sizes 1000,5000] [--queries 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.conftest import PG_ADMIN_URL, new_pg_database  # noqa: E402
from tests.pgvector_server import pgvector_server  # noqa: E402

from agentmill.ids import new_id  # noqa: E402
from agentmill.store.db import Database, Tx  # noqa: E402
from agentmill.store.repositories import memories  # noqa: E402
from agentmill.tools.memory import _closest  # noqa: E402

DIMENSIONS = 1536
MODEL = "bench/embed"


def vector(rng: random.Random) -> list[float]:
    return [round(rng.gauss(0, 1), 5) for _ in range(DIMENSIONS)]


async def fill(db: Database, workspace: str, count: int, rng: random.Random) -> None:
    for start in range(0, count, 500):
        batch = [vector(rng) for _ in range(min(500, count - start))]

        def write(tx: Tx, batch: list[list[float]] = batch, start: int = start) -> None:
            for number, embedding in enumerate(batch):
                memories.add_memory(
                    tx,
                    workspace,
                    text=f"memory {start + number}",
                    embedding=embedding,
                    embedding_model=MODEL,
                )

        await db.write(write)


async def measure(url: str, size: int, queries: int) -> tuple[float, float, bool]:
    rng = random.Random(size)
    db = Database(url)
    await db.start()
    try:
        mine = new_id("ws")
        await fill(db, mine, size, rng)
        await fill(db, new_id("ws"), size, rng)
        in_db = await db.read(lambda tx: memories.can_rank_by_vector(tx, [1.0] * DIMENSIONS))
        timings = []
        for _ in range(queries):
            query = vector(rng)
            started = time.perf_counter()
            hits = await db.read(lambda tx, q=query: _closest(tx, mine, MODEL, q, 5))
            timings.append((time.perf_counter() - started) * 1000)
            assert len(hits) == 5
    finally:
        await db.close()
    timings.sort()
    return statistics.median(timings), timings[int(len(timings) * 0.95) - 1], in_db


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,5000", help="memories per workspace")
    parser.add_argument("--queries", type=int, default=10)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    print("memory search by meaning, top 5 of N memories (1,536 dimensions), ms per query")
    print("| N | in-process p50 | in-process p95 | pgvector p50 | pgvector p95 | speed-up |")
    print("|---|---|---|---|---|---|")
    async with pgvector_server() as vector_admin:
        for size in sizes:
            async with new_pg_database(PG_ADMIN_URL) as plain_url:
                plain = await measure(plain_url, size, args.queries)
            async with new_pg_database(vector_admin) as vector_url:
                ranked = await measure(vector_url, size, args.queries)
            # Each side must take the path it is named after.
            assert not plain[2], "the machine's PostgreSQL ranked with pgvector"
            assert ranked[2], "the pgvector server did not rank in the database"
            print(
                f"| {size:,} | {plain[0]:.1f} | {plain[1]:.1f} | {ranked[0]:.1f} | {ranked[1]:.1f}"
                f" | {plain[0] / ranked[0]:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())

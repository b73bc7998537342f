"""Memory: stored texts are found again, by meaning (the scripted provider's word embeddings)
or by words (SQLite FTS5, PostgreSQL full-text), closest first, and only in their workspace.
Every test runs on SQLite, on the machine's PostgreSQL (vectors ranked in the process) and on
a PostgreSQL with pgvector (vectors ranked in the database)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentmill.errors import NotFound
from agentmill.gateway import Gateway
from agentmill.gateway.types import CallReport
from agentmill.ids import new_id
from agentmill.store.db import Database
from agentmill.store.repositories import memories
from agentmill.tools.base import ToolContext, ToolUnavailable
from agentmill.tools.memory import MemorySearchTool, MemoryStore, MemoryStoreTool
from agentmill.tools.registry import ToolRegistry
from tests.conftest import BACKENDS, migrated_database_url

EMBED = "scripted/embed"
FACTS = [
    "The bees make honey in the summer meadow.",
    "The backup server restarts every night at two.",
    "Invoice 42 was paid by Acme in March.",
]


@pytest.fixture(params=[*BACKENDS, "pgvector"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return migrated_database_url(request, tmp_path, request.param)


@pytest.fixture(params=["semantic", "full-text"])
def store(request: pytest.FixtureRequest, db: Database) -> MemoryStore:
    model = EMBED if request.param == "semantic" else None
    return MemoryStore(db, Gateway(), model)


def texts(hits: list) -> list[str]:
    return [hit.memory.text for hit in hits]


async def test_search_finds_what_was_stored_closest_first(store: MemoryStore) -> None:
    ws = new_id("ws")
    for fact in FACTS:
        await store.add(ws, fact, {"source": "test"})
    hits = await store.search(ws, "when does the server restart at night?", limit=3)
    assert texts(hits)[0] == FACTS[1]
    assert hits[0].memory.metadata == {"source": "test"}
    assert hits[0].score > (hits[1].score if len(hits) > 1 else 0)
    hits = await store.search(ws, "who paid invoice 42", limit=1)
    assert texts(hits) == [FACTS[2]]


async def test_a_text_sharing_more_words_ranks_higher(store: MemoryStore) -> None:
    ws = new_id("ws")
    await store.add(ws, "bees sleep at night")
    await store.add(ws, "bees make honey from flower nectar")
    await store.add(ws, "a kettle boils water")
    hits = await store.search(ws, "honey nectar bees", limit=5)
    assert texts(hits)[:2] == ["bees make honey from flower nectar", "bees sleep at night"]


async def test_search_never_returns_another_workspaces_memories(store: MemoryStore) -> None:
    mine, theirs = new_id("ws"), new_id("ws")
    await store.add(theirs, "the launch code is 0000 for the rocket")
    await store.add(mine, "the rocket launches on friday")
    hits = await store.search(mine, "rocket launch code", limit=10)
    assert texts(hits) == ["the rocket launches on friday"]
    assert [m.text for m in await store.recent(mine)] == ["the rocket launches on friday"]
    assert await store.search(new_id("ws"), "rocket launch code") == []


async def test_vectors_of_another_length_are_never_returned(db: Database) -> None:
    store, ws = MemoryStore(db, Gateway(), EMBED), new_id("ws")
    stored = await store.add(ws, "the rocket launches on friday")
    # The same model name with another length (its dimensions were changed, say).
    await db.write(
        lambda tx: memories.add_memory(
            tx, ws, text="short vector", embedding=[1.0, 0.0], embedding_model=EMBED
        )
    )
    hits = await store.search(ws, "rocket launch", limit=10)
    assert [hit.memory.id for hit in hits] == [stored.id]


async def test_recent_lists_newest_first_and_delete_forgets(store: MemoryStore) -> None:
    ws, other = new_id("ws"), new_id("ws")
    first = await store.add(ws, "first note")
    second = await store.add(ws, "second note")
    assert [m.id for m in await store.recent(ws)] == [second.id, first.id]
    with pytest.raises(NotFound, match=re.escape(f"memory {first.id!r} not found")):
        await store.delete(other, first.id)  # another workspace cannot delete it
    await store.delete(ws, first.id)
    assert [m.id for m in await store.recent(ws)] == [second.id]
    assert texts(await store.search(ws, "first note")) == ["second note"]
    with pytest.raises(NotFound):
        await store.delete(ws, first.id)


async def test_full_text_queries_are_data_not_syntax(db: Database) -> None:
    store = MemoryStore(db)
    ws = new_id("ws")
    await store.add(ws, 'she said "NEAR" and left; column:text OR -x *')
    for query in ['"NEAR(', "text:she", "-x OR *", "'); DROP TABLE memories; --", "NOT AND"]:
        await store.search(ws, query)  # no syntax error, whatever the words
    assert texts(await store.search(ws, 'NEAR" said')) == [
        'she said "NEAR" and left; column:text OR -x *'
    ]
    assert await store.search(ws, "!!! ???") == []


async def test_semantic_memory_embeds_through_the_gateway_and_reports_the_calls(
    db: Database,
) -> None:
    store = MemoryStore(db, Gateway(), EMBED)
    calls: list[CallReport] = []
    ws = new_id("ws")
    record = await store.add(ws, "grapes ripen in september", sink=calls.append)
    assert record.embedding_model == EMBED
    await store.search(ws, "when do grapes ripen", sink=calls.append)
    assert [(c.model, c.outcome) for c in calls] == [(EMBED, "ok"), (EMBED, "ok")]
    # A memory made without a model is not compared with vectors it does not have.
    words_only = MemoryStore(db)
    await words_only.add(ws, "grapes are purple")
    assert texts(await store.search(ws, "grapes")) == ["grapes ripen in september"]
    assert sorted(texts(await words_only.search(ws, "grapes", limit=5))) == [
        "grapes are purple",
        "grapes ripen in september",
    ]


async def test_the_tools_store_and_search_within_the_calling_workspace(db: Database) -> None:
    registry = ToolRegistry(settings={"memory": {"embedding_model": EMBED}})
    save, search = registry.resolve("memory_store"), registry.resolve("memory_search")
    assert isinstance(save, MemoryStoreTool)
    assert isinstance(search, MemorySearchTool)
    mine, theirs = new_id("ws"), new_id("ws")

    def context(ws: str) -> ToolContext:
        return ToolContext(
            workspace_id=ws, db=db, gateway=Gateway(), settings=registry.settings_for(save.name)
        )

    stored = await save.run(
        {"text": "the staging database is on port 5433", "metadata": {"topic": "ops"}},
        context(mine),
    )
    assert not stored.is_error
    assert stored.content["stored"] is True
    await save.run({"text": "the staging database password rotates weekly"}, context(theirs))
    found = await search.run({"query": "staging database port", "limit": 5}, context(mine))
    assert [(hit["id"], hit["text"], hit["metadata"]) for hit in found.content] == [
        (stored.content["id"], "the staging database is on port 5433", {"topic": "ops"})
    ]


async def test_the_tools_refuse_to_run_outside_a_step() -> None:
    with pytest.raises(ToolUnavailable, match="needs a workspace and the database"):
        await MemorySearchTool().run({"query": "x"}, ToolContext(workspace_id="ws"))

"""``memory_store`` and ``memory_search``: what a workspace's agents remember across runs.

With an embedding model configured (``AGENTMILL_EMBEDDING_MODEL``, or in ``agentmill.yaml``::

    tools:
      memory:
        embedding_model: openai/text-embedding-3-small

) each text is embedded through the gateway when stored (budgets and accounting apply, as to
any model call), and search ranks the workspace's memories by cosine similarity to the
query's embedding: inside PostgreSQL with pgvector where the server has it, in the process
otherwise. Without one, search matches words (SQLite FTS5, PostgreSQL full-text).
Memories embedded with another model than today's are found only by listing, not by meaning:
vectors of different models do not compare.

Everything is scoped to the calling workspace (decision 7): there is no argument a model can
give to reach another workspace's memories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from agentmill.gateway import CallContext, EmbedRequest, Gateway
from agentmill.gateway.types import CallReport
from agentmill.store.db import Database, Tx
from agentmill.store.repositories import memories
from agentmill.store.repositories.memories import MemoryHit, MemoryRecord
from agentmill.tools.base import ToolContext, ToolResult, ToolUnavailable

SETTINGS_SECTION = "memory"  # both tools read ``tools: memory:`` (one model for both)
MAX_TEXT = 20_000  # characters of one memory
MAX_LIMIT = 50  # results of one search

Sink = Callable[[CallReport], None]


class MemoryStore:
    """A workspace-scoped memory over the database, embedding through ``gateway`` when an
    ``embedding_model`` is set."""

    def __init__(
        self, db: Database, gateway: Gateway | None = None, embedding_model: str | None = None
    ) -> None:
        if embedding_model and gateway is None:
            raise ToolUnavailable(f"embedding model {embedding_model!r} needs the model gateway")
        self.db = db
        self.gateway = gateway
        self.embedding_model = embedding_model or None

    @property
    def semantic(self) -> bool:
        """Whether search goes by meaning (an embedding model is set) or by words."""
        return self.embedding_model is not None

    async def add(
        self,
        workspace_id: str,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        context: CallContext | None = None,
        sink: Sink | None = None,
    ) -> MemoryRecord:
        """Remember ``text`` in the workspace (embedded first, when search is semantic)."""
        embedding = await self._embed(workspace_id, text, context, sink)
        return await self.db.write(
            lambda tx: memories.add_memory(
                tx,
                workspace_id,
                text=text,
                metadata=metadata,
                embedding=embedding,
                embedding_model=self.embedding_model,
            )
        )

    async def search(
        self,
        workspace_id: str,
        query: str,
        limit: int = 5,
        *,
        context: CallContext | None = None,
        sink: Sink | None = None,
    ) -> list[MemoryHit]:
        """The workspace's memories closest to ``query``, best first."""
        limit = max(1, min(limit, MAX_LIMIT))
        if self.embedding_model is None:
            return await self.db.read(lambda tx: memories.full_text(tx, workspace_id, query, limit))
        vector = await self._embed(workspace_id, query, context, sink)
        assert vector is not None
        model = self.embedding_model
        return await self.db.read(lambda tx: _closest(tx, workspace_id, model, vector, limit))

    async def recent(self, workspace_id: str, limit: int = 20) -> list[MemoryRecord]:
        """The workspace's newest memories first."""
        limit = max(1, min(limit, MAX_LIMIT))
        return await self.db.read(lambda tx: memories.recent(tx, workspace_id, limit))

    async def delete(self, workspace_id: str, memory_id: str) -> None:
        """Forget one memory; NotFound if the workspace has none with that id."""
        await self.db.write(lambda tx: memories.delete_memory(tx, workspace_id, memory_id))

    async def _embed(
        self, workspace_id: str, text: str, context: CallContext | None, sink: Sink | None
    ) -> list[float] | None:
        if self.embedding_model is None or self.gateway is None:
            return None
        context = context or CallContext(workspace_id=workspace_id)
        response = await self.gateway.embed(
            EmbedRequest(model=self.embedding_model, inputs=(text,), context=context), sink=sink
        )
        return list(response.vectors[0])


def _closest(
    tx: Tx, workspace_id: str, model: str, vector: list[float], limit: int
) -> list[MemoryHit]:
    """Rank in the database with pgvector where it can; otherwise load the workspace's vectors
    of this model and rank them here."""
    if memories.can_rank_by_vector(tx, vector):
        return memories.nearest(tx, workspace_id, model, vector, limit)
    hits = [
        MemoryHit(memory=record, score=cosine(vector, embedding))
        for record, embedding in memories.embedded(tx, workspace_id, model)
        if len(embedding) == len(vector)  # another length does not compare (as in pgvector)
    ]
    # Newest first among equals, so a restated fact wins over the one it replaced.
    hits.sort(key=lambda hit: (hit.score, hit.memory.created_at), reverse=True)
    return hits[:limit]


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity; 0 for vectors of different lengths or of length zero."""
    if len(a) != len(b):
        return 0.0
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def store_for(context: ToolContext) -> tuple[MemoryStore, str]:
    """The memory a tool call reaches: its step's workspace's, with the configured model."""
    if context.db is None or context.workspace_id is None:
        raise ToolUnavailable("memory needs a workspace and the database (it runs inside a step)")
    model = context.settings.get("embedding_model")
    return MemoryStore(context.db, context.gateway, str(model) if model else None), (
        context.workspace_id
    )


def hit_json(hit: MemoryHit) -> dict[str, Any]:
    """A search result as the model sees it."""
    return {
        "id": hit.memory.id,
        "text": hit.memory.text,
        "metadata": hit.memory.metadata,
        "score": round(hit.score, 4),
        "created_at": hit.memory.created_at.isoformat(),
    }


class MemoryStoreTool:
    """``memory_store``: remember a text (and optional metadata) for later runs."""

    name = "memory_store"
    description = (
        "Remember a fact, decision or note for later: this and future runs in this workspace "
        "can find it again with memory_search. Store one self-contained statement per call."
    )
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TEXT,
                "description": "What to remember, written to be understood on its own later.",
            },
            "metadata": {
                "type": "object",
                "description": "Optional JSON fields kept with the text (source, topic, ...).",
            },
        },
        "required": ["text"],
        "additionalProperties": False,
    }

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        store, workspace_id = store_for(context)
        record = await store.add(
            workspace_id,
            str(arguments["text"]),
            arguments.get("metadata") or {},
            context=context.call_context,
            sink=context.sink,
        )
        return ToolResult(content={"id": record.id, "stored": True})


class MemorySearchTool:
    """``memory_search``: the workspace's memories closest to a query."""

    name = "memory_search"
    description = (
        "Search what was remembered with memory_store in this workspace (in this or earlier "
        "runs). Returns the closest memories first, each with a score (higher is closer)."
    )
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TEXT,
                "description": "What to look for, in words or as a question.",
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": 5,
                "description": "How many memories to return at most.",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        store, workspace_id = store_for(context)
        hits = await store.search(
            workspace_id,
            str(arguments["query"]),
            int(arguments.get("limit", 5)),
            context=context.call_context,
            sink=context.sink,
        )
        return ToolResult(content=[hit_json(hit) for hit in hits])

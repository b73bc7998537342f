"""A workspace's memory over HTTP: what its agents store with ``memory_store`` and find with
``memory_search``, to look at, add to, and prune."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from agentmill.api.deps import DbDep, WorkspaceAccess, require
from agentmill.api.schemas import MemoryCreate, MemoryPublic
from agentmill.domain.permissions import Permission
from agentmill.engine.engine import Engine
from agentmill.gateway import CallContext
from agentmill.store.db import Database
from agentmill.store.repositories.memories import MemoryRecord
from agentmill.tools.memory import MAX_LIMIT, MemoryStore

router = APIRouter(tags=["memory"])

Read = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_READ)]
Write = Annotated[WorkspaceAccess, require(Permission.WORKFLOW_CREATE)]


def _store(request: Request, db: Database) -> MemoryStore:
    """The same memory the agents' tools reach: the engine's gateway and embedding model."""
    engine: Engine = request.app.state.engine
    model = engine.tools.settings_for("memory_store").get("embedding_model")
    return MemoryStore(db, engine.gateway, str(model) if model else None)


def _context(access: WorkspaceAccess) -> CallContext:
    # Embeddings are model calls: budgeted and accounted to the caller, like /v1/embeddings.
    principal = access.principal
    return CallContext(
        workspace_id=access.workspace_id,
        user_id=principal.user_id or None,
        api_key_id=principal.key_id,
    )


def _public(record: MemoryRecord, score: float | None = None) -> MemoryPublic:
    return MemoryPublic(
        id=record.id,
        text=record.text,
        metadata=record.metadata,
        embedding_model=record.embedding_model,
        created_at=record.created_at,
        score=score,
    )


@router.post("/workspaces/{ws}/memory", status_code=201, response_model=MemoryPublic)
async def store_memory(
    body: MemoryCreate, access: Write, db: DbDep, request: Request
) -> MemoryPublic:
    """Remember a text in the workspace."""
    record = await _store(request, db).add(
        access.workspace_id, body.text, body.metadata, context=_context(access)
    )
    return _public(record)


@router.get("/workspaces/{ws}/memory", response_model=list[MemoryPublic])
async def search_memory(
    access: Read,
    db: DbDep,
    request: Request,
    q: Annotated[str | None, Query(max_length=20_000)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> list[MemoryPublic]:
    """Search the workspace's memory (closest first), or list it newest first without q."""
    store = _store(request, db)
    if not q:
        return [_public(r) for r in await store.recent(access.workspace_id, limit)]
    hits = await store.search(access.workspace_id, q, limit, context=_context(access))
    return [_public(hit.memory, hit.score) for hit in hits]


@router.delete("/workspaces/{ws}/memory/{memory_id}", status_code=204)
async def delete_memory(memory_id: str, access: Write, db: DbDep, request: Request) -> None:
    """Forget one memory."""
    await _store(request, db).delete(access.workspace_id, memory_id)

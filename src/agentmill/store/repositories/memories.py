"""A workspace's memories: texts kept for agents, found again by meaning or by words.

Every function takes the workspace and never reads outside it (decision 7). Ranking by meaning
happens in the database with pgvector's cosine distance where the server has the extension
(:func:`nearest`, see ``store/pgvector.py``), otherwise in Python over :func:`embedded` (see
``tools/memory.py``); ranking by words happens in
the database: SQLite's FTS5 table ``memories_fts`` (migration 0009) with BM25, or PostgreSQL's
``to_tsvector`` with ``ts_rank``. Either way any of the query's words may match, and texts
matching more (and rarer) words rank higher.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, String, Text, delete, insert, select, text
from sqlalchemy.types import TypeEngine

from agentmill.errors import NotFound
from agentmill.ids import new_id
from agentmill.store import pgvector
from agentmill.store.db import Tx
from agentmill.store.models import memories
from agentmill.store.types import JsonValue, UtcDateTime

_m = memories.c


@dataclass(frozen=True, kw_only=True)
class MemoryRecord:
    """One remembered text (its embedding stays in the database)."""

    id: str
    workspace_id: str
    text: str
    metadata: dict[str, Any]
    embedding_model: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class MemoryHit:
    """A search result: the memory and how well it matched (higher is closer; the scale
    depends on the kind of search: cosine similarity, or a full-text rank)."""

    memory: MemoryRecord
    score: float


_PUBLIC = (_m.id, _m.workspace_id, _m.text, _m["metadata"], _m.embedding_model, _m.created_at)


def _record(row: Mapping[Any, Any]) -> MemoryRecord:
    return MemoryRecord(
        id=row["id"],
        workspace_id=row["workspace_id"],
        text=row["text"],
        metadata=dict(row["metadata"] or {}),
        embedding_model=row["embedding_model"],
        created_at=row["created_at"],
    )


def add_memory(
    tx: Tx,
    workspace_id: str,
    *,
    text: str,
    metadata: Mapping[str, Any] | None = None,
    embedding: list[float] | None = None,
    embedding_model: str | None = None,
) -> MemoryRecord:
    """Store a text (and its embedding, if one was made) in the workspace."""
    values: dict[str, Any] = {
        "id": new_id("mem"),
        "workspace_id": workspace_id,
        "text": text,
        "metadata": dict(metadata or {}),
        "embedding": embedding,
        "embedding_model": embedding_model if embedding is not None else None,
        "created_at": tx.now,
    }
    tx.conn.execute(insert(memories).values(**values))
    return _record(values)


def delete_memory(tx: Tx, workspace_id: str, memory_id: str) -> None:
    """Forget a memory; NotFound if the workspace has none with that id."""
    result = tx.conn.execute(
        delete(memories).where(_m.workspace_id == workspace_id, _m.id == memory_id)
    )
    if result.rowcount == 0:
        raise NotFound(f"memory {memory_id!r} not found")


def recent(tx: Tx, workspace_id: str, limit: int) -> list[MemoryRecord]:
    """The workspace's newest memories first."""
    query = (
        select(*_PUBLIC)
        .where(_m.workspace_id == workspace_id)
        .order_by(_m.created_at.desc(), _m.id.desc())
        .limit(limit)
    )
    return [_record(row._mapping) for row in tx.conn.execute(query)]


def embedded(tx: Tx, workspace_id: str, model: str) -> list[tuple[MemoryRecord, list[float]]]:
    """The workspace's memories embedded with ``model`` (vectors of other models do not compare),
    with their vectors."""
    query = select(*_PUBLIC, _m.embedding).where(
        _m.workspace_id == workspace_id,
        _m.embedding_model == model,
        _m.embedding.is_not(None),
    )
    return [(_record(row._mapping), list(row.embedding)) for row in tx.conn.execute(query)]


def can_rank_by_vector(tx: Tx, vector: list[float]) -> bool:
    """Whether :func:`nearest` can rank this query vector in the database (pgvector takes up
    to 16,000 finite numbers)."""
    return (
        0 < len(vector) <= pgvector.MAX_DIMENSIONS
        and all(math.isfinite(x) for x in vector)
        and pgvector.has_vector_column(tx.conn)
    )


def nearest(
    tx: Tx, workspace_id: str, model: str, vector: list[float], limit: int
) -> list[MemoryHit]:
    """The workspace's memories embedded with ``model`` closest to ``vector`` (by cosine
    similarity, best first), ranked by pgvector; only where :func:`can_rank_by_vector`."""
    params = {
        "ws": workspace_id,
        "model": model,
        "query": "[" + ",".join(repr(float(x)) for x in vector) + "]",
        "dims": len(vector),
        "limit": limit,
    }
    hits = []
    for row in tx.conn.execute(_PG_NEAREST, params):
        # A zero vector has no direction: pgvector says NaN, the in-process path says 0.
        score = 0.0 if math.isnan(row.score) else float(row.score)
        hits.append(MemoryHit(memory=_record(row._mapping), score=score))
    return hits


def full_text(tx: Tx, workspace_id: str, query: str, limit: int) -> list[MemoryHit]:
    """The workspace's memories sharing words with ``query``, best match first."""
    words = re.findall(r"\w+", query)
    if not words:
        return []
    if tx.is_postgres:
        params: dict[str, Any] = {"ws": workspace_id, "q": " ".join(words), "limit": limit}
        statement = _PG_FULL_TEXT
    else:
        # Each word quoted: the query is data, never FTS5 syntax (no NEAR, no column filters).
        match = " OR ".join('"' + word.replace('"', '""') + '"' for word in words)
        params = {"ws": workspace_id, "match": match, "limit": limit}
        statement = _SQLITE_FULL_TEXT
    rows = tx.conn.execute(statement, params)
    return [MemoryHit(memory=_record(row._mapping), score=float(row.score)) for row in rows]


_COLUMNS: dict[str, TypeEngine[Any]] = {
    "id": String(),
    "workspace_id": String(),
    "text": Text(),
    "metadata": JsonValue,
    "embedding_model": String(),
    "created_at": UtcDateTime(),
    "score": Float(),
}

# bm25() is lower for better matches; negated so that higher is better, as everywhere else.
_SQLITE_FULL_TEXT = text(
    "SELECT m.id, m.workspace_id, m.text, m.metadata, m.embedding_model, m.created_at,"
    " -bm25(memories_fts) AS score"
    " FROM memories_fts JOIN memories AS m ON m.id = memories_fts.memory_id"
    " WHERE memories_fts MATCH :match AND memories_fts.workspace_id = :ws"
    " AND m.workspace_id = :ws"
    " ORDER BY bm25(memories_fts), m.created_at DESC LIMIT :limit"
).columns(**_COLUMNS)

# plainto_tsquery joins the words with AND; OR (any word matches, more words rank higher) is
# what a memory search wants. Its output is quoted lexemes, so swapping the operator is safe.
_PG_FULL_TEXT = text(
    "SELECT m.id, m.workspace_id, m.text, m.metadata, m.embedding_model, m.created_at,"
    " ts_rank(to_tsvector('english', m.text), q.query) AS score"
    " FROM memories AS m,"
    " CAST(replace(CAST(plainto_tsquery('english', :q) AS text), '&', '|') AS tsquery)"
    " AS q(query)"
    " WHERE m.workspace_id = :ws AND to_tsvector('english', m.text) @@ q.query"
    " ORDER BY score DESC, m.created_at DESC LIMIT :limit"
).columns(**_COLUMNS)

# Exact search within the workspace (its index narrows the rows; no approximate index, whose
# post-filtering could drop a workspace's nearest rows). Only vectors of the query's length are
# compared: pgvector refuses a distance between vectors of different lengths. NaN distances
# (zero vectors) rank as similarity 0, as in Python; newest first among equals.
_PG_NEAREST = text(
    "SELECT m.id, m.workspace_id, m.text, m.metadata, m.embedding_model, m.created_at,"
    f" 1 - (m.{pgvector.COLUMN} <=> CAST(:query AS vector)) AS score"
    " FROM memories AS m"
    " WHERE m.workspace_id = :ws AND m.embedding_model = :model"
    f" AND m.{pgvector.COLUMN} IS NOT NULL AND vector_dims(m.{pgvector.COLUMN}) = :dims"
    f" ORDER BY coalesce(nullif(m.{pgvector.COLUMN} <=> CAST(:query AS vector), 'NaN'), 1),"
    " m.created_at DESC LIMIT :limit"
).columns(**_COLUMNS)

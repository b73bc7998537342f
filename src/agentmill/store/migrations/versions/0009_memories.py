"""memories: each workspace's remembered texts, with embeddings and full-text search

Revision ID: 0009
Revises: 0008

Embeddings are JSON arrays on both engines: the pgvector extension is not available on the
PostgreSQL servers this was built against. On SQLite an FTS5 table, kept in step with
``memories`` by triggers, serves full-text search; PostgreSQL matches ``to_tsvector`` at query
time (within one workspace's rows, found by the workspace index). No foreign key to
``workspaces``: local runs (``agentmill run``) remember in the ``local`` workspace, which has no
row; deleting a workspace deletes its memories explicitly.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from agentmill.store import types as am

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# The porter stemmer makes "bees" match "bee", as PostgreSQL's 'english' configuration does.
_SQLITE_FTS = [
    "CREATE VIRTUAL TABLE memories_fts USING fts5("
    "text, memory_id UNINDEXED, workspace_id UNINDEXED, tokenize = 'porter unicode61')",
    "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN "
    "INSERT INTO memories_fts (text, memory_id, workspace_id) "
    "VALUES (new.text, new.id, new.workspace_id); END",
    "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN "
    "DELETE FROM memories_fts WHERE memory_id = old.id; END",
]


def upgrade() -> None:
    op.create_table(
        "memories",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("embedding", _JSON, nullable=True),
        sa.Column("embedding_model", sa.String(length=200), nullable=True),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_memories_workspace_created", "memories", ["workspace_id", "created_at"], unique=False
    )
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_FTS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS memories_fts")  # its triggers go with ``memories``
    op.drop_index("ix_memories_workspace_created", table_name="memories")
    op.drop_table("memories")

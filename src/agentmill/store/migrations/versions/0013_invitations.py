"""invitations: joining a workspace when registration is by invitation

Revision ID: 0013
Revises: 0012

The token is stored as its SHA-256 hash (unique: registration finds the invitation by it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from agentmill.store import types as am

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("workspace_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", am.UtcDateTime(), nullable=False),
        sa.Column("expires_at", am.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_invitations_workspace", "invitations", ["workspace_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_invitations_workspace", table_name="invitations")
    op.drop_table("invitations")

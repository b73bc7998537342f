"""Tables. Runs, steps and events are written by the engine's transitions (Core statements);
the declarative classes give them names, types and indexes in one place."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentmill.store.types import JsonValue, Money, UtcDateTime

Id = String(40)
EventId = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Price = cost × (1 + markup): what calls through the gateway are charged to the workspace.
    markup: Mapped[Decimal] = mapped_column(Money, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Membership(Base):
    __tablename__ = "memberships"

    workspace_id: Mapped[str] = mapped_column(
        Id, ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Invitation(Base):
    """An invitation to join a workspace with a role. The token is shown once (to the inviter,
    who passes it on) and stored as a SHA-256 hash, like API keys; registering with it creates
    the account and its membership. Revoked invitations are deleted; so are accepted ones (the
    membership is their record)."""

    __tablename__ = "invitations"
    __table_args__ = (Index("ix_invitations_workspace", "workspace_id"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, ForeignKey("workspaces.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ApiKey(Base):
    """An API key: shown once, stored as a SHA-256 hash (keys are random, 256 bits), found by
    its visible prefix."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, ForeignKey("workspaces.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(Id, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WorkspaceProvider(Base):
    """A model provider a workspace configured for itself. The API key is stored encrypted
    (agentmill/crypto.py) and never returned; headers are not secret and stored as they are."""

    __tablename__ = "workspace_providers"
    __table_args__ = (
        UniqueConstraint("workspace_id", "name", name="uq_workspace_providers_workspace_name"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))  # the ``provider/`` prefix of model names
    kind: Mapped[str] = mapped_column(String(32))
    base_url: Mapped[str | None] = mapped_column(Text)
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    timeout: Mapped[float] = mapped_column()
    headers: Mapped[dict[str, str]] = mapped_column(JsonValue)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WorkspaceEgress(Base):
    """A workspace's own egress allowlist for ``http_request`` (no row: the operator's default).
    Entries are stored as the API accepted them; tools.http parses them on use."""

    __tablename__ = "workspace_egress"

    workspace_id: Mapped[str] = mapped_column(
        Id, ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    hosts: Mapped[list[str]] = mapped_column(JsonValue)
    networks: Mapped[list[str]] = mapped_column(JsonValue)
    ports: Mapped[list[int]] = mapped_column(JsonValue)
    updated_by: Mapped[str | None] = mapped_column(Id)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RevokedToken(Base):
    """Access tokens ended by logout, kept until they would have expired anyway."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


LOCAL_WORKSPACE = "local"  # workflows run with `agentmill run`, outside any API workspace


class Workflow(Base):
    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_workflows_workspace_name"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id)
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WorkflowVersion(Base):
    __tablename__ = "workflow_versions"
    __table_args__ = (UniqueConstraint("workflow_id", "version"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(Id, ForeignKey("workflows.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    checksum: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_created", "status", "created_at"),
        Index("ix_runs_workspace_created", "workspace_id", "created_at"),
        Index("ix_runs_root", "root_run_id"),
        Index(
            "ix_runs_deadline",
            "deadline_at",
            sqlite_where=text("deadline_at IS NOT NULL"),
            postgresql_where=text("deadline_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id)
    workflow_id: Mapped[str] = mapped_column(Id, ForeignKey("workflows.id", ondelete="CASCADE"))
    version_id: Mapped[str] = mapped_column(Id, ForeignKey("workflow_versions.id"))
    spec_path: Mapped[str] = mapped_column(String(255), default="")
    root_run_id: Mapped[str] = mapped_column(Id)
    parent_run_id: Mapped[str | None] = mapped_column(Id)
    parent_step_id: Mapped[str | None] = mapped_column(Id)
    status: Mapped[str] = mapped_column(String(16))
    inputs: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    error: Mapped[str | None] = mapped_column(Text)
    # The key of the step whose failure ended the run (a dead letter's trace; see redrive.py).
    failed_step: Mapped[str | None] = mapped_column(String(96))
    pending_steps: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    started_by: Mapped[str | None] = mapped_column(Id)  # the user, for per-user budgets
    api_key_id: Mapped[str | None] = mapped_column(Id)  # the key it was started with, if any


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("run_id", "step_key"),
        Index(
            "ix_steps_ready",
            "available_at",
            sqlite_where=text("status IN ('QUEUED', 'RETRYING')"),
            postgresql_where=text("status IN ('QUEUED', 'RETRYING')"),
        ),
        Index(
            "ix_steps_leased",
            "lease_expires_at",
            sqlite_where=text("status = 'RUNNING' AND lease_expires_at IS NOT NULL"),
            postgresql_where=text("status = 'RUNNING' AND lease_expires_at IS NOT NULL"),
        ),
        Index(  # dead letters, newest first: failed steps only
            "ix_steps_failed",
            "finished_at",
            sqlite_where=text("status = 'FAILED'"),
            postgresql_where=text("status = 'FAILED'"),
        ),
        Index(  # human steps with a timeout, for the sweep that applies on_timeout
            "ix_steps_wait_until",
            "wait_until",
            sqlite_where=text("status = 'WAITING' AND wait_until IS NOT NULL"),
            postgresql_where=text("status = 'WAITING' AND wait_until IS NOT NULL"),
        ),
        Index(  # map items only: most steps have no parent and skip this index
            "ix_steps_parent",
            "parent_step_id",
            "map_index",
            sqlite_where=text("parent_step_id IS NOT NULL"),
            postgresql_where=text("parent_step_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    run_id: Mapped[str] = mapped_column(Id, ForeignKey("runs.id", ondelete="CASCADE"))
    root_run_id: Mapped[str] = mapped_column(Id)
    step_key: Mapped[str] = mapped_column(String(96))
    spec_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    # The named queue the step is routed to (the spec's ``queue``); workers claim only theirs.
    queue: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    parent_step_id: Mapped[str | None] = mapped_column(Id)
    map_index: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # the lease's fencing token
    # Attempts spent: the failed ones, and every attempt before a re-drive.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    available_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # When the Redis queue last carried this step; it is due again once ``available_at`` is
    # later (a retry, a release) or the message looks lost (see queue/redis_streams.py).
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    input: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    output: Mapped[Any] = mapped_column(JsonValue, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    child_count: Mapped[int | None] = mapped_column(Integer)
    children_started: Mapped[int | None] = mapped_column(Integer)
    children_done: Mapped[int | None] = mapped_column(Integer)
    child_run_id: Mapped[str | None] = mapped_column(Id)
    # A waiting human step's deadline: the sweep applies its on_timeout after it.
    wait_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    duration_ms: Mapped[float | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class StepJoin(Base):
    """How many needs a not-yet-ready join step still waits for. One row per join in flight,
    decremented as each need finishes (O(1), instead of re-reading every need's status)."""

    __tablename__ = "step_joins"

    run_id: Mapped[str] = mapped_column(
        Id, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    step_key: Mapped[str] = mapped_column(String(96), primary_key=True)
    remaining: Mapped[int] = mapped_column(Integer)
    ran: Mapped[int] = mapped_column(Integer)  # needs that finished without being skipped


class Event(Base):
    """The append-only log of a run: transitions, logs, model calls (decision 8)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_run", "run_id", "id"),
        Index(  # sub-runs' events only; a top-level run's are found by run_id
            "ix_events_subrun",
            "root_run_id",
            "id",
            sqlite_where=text("root_run_id <> run_id"),
            postgresql_where=text("root_run_id <> run_id"),
        ),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(Id)
    root_run_id: Mapped[str] = mapped_column(Id)
    step_key: Mapped[str | None] = mapped_column(String(96))
    attempt: Mapped[int | None] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(8))
    ts: Mapped[datetime] = mapped_column(UtcDateTime)
    data: Mapped[dict[str, Any]] = mapped_column(JsonValue)


class LlmCall(Base):
    """One model call: who made it, what it used and cost, how long it took, how it failed."""

    __tablename__ = "llm_calls"
    __table_args__ = (
        Index("ix_llm_calls_run", "run_id"),
        Index("ix_llm_calls_workspace_created", "workspace_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str | None] = mapped_column(Id)
    user_id: Mapped[str | None] = mapped_column(Id)
    api_key_id: Mapped[str | None] = mapped_column(Id)
    run_id: Mapped[str | None] = mapped_column(Id)  # None: a call through /v1, not a step's
    step_id: Mapped[str | None] = mapped_column(Id)
    agent: Mapped[str | None] = mapped_column(String(96))
    attempt: Mapped[int | None] = mapped_column(Integer)
    turn: Mapped[int | None] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(160))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost: Mapped[Decimal] = mapped_column(Money)  # what the provider charges
    price: Mapped[Decimal] = mapped_column(Money, server_default="0")  # what the workspace pays
    latency_ms: Mapped[float] = mapped_column()
    outcome: Mapped[str] = mapped_column(String(16), server_default="ok")  # ok | error
    status: Mapped[int | None] = mapped_column(Integer)  # the provider's HTTP status on error
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class WorkerProcess(Base):
    """A worker process, as it last reported itself (liveness for /health and operators)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(160), primary_key=True)  # host:pid:name
    name: Mapped[str] = mapped_column(String(96))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(16))  # the queue backend it takes work from
    # The named queues it serves, comma-separated; NULL: every queue.
    queues: Mapped[str | None] = mapped_column(Text)
    concurrency: Mapped[int] = mapped_column(Integer)
    in_flight: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When a live worker found it silent past the liveness window and took its steps over.
    lost_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# The tables themselves, for Core statements (the engine's hot path uses Core, not the ORM).
workflows = cast(Table, Workflow.__table__)
workflow_versions = cast(Table, WorkflowVersion.__table__)
runs = cast(Table, Run.__table__)
steps = cast(Table, Step.__table__)
events = cast(Table, Event.__table__)
step_joins = cast(Table, StepJoin.__table__)
users = cast(Table, User.__table__)
workspaces = cast(Table, Workspace.__table__)
memberships = cast(Table, Membership.__table__)
api_keys = cast(Table, ApiKey.__table__)
workspace_providers = cast(Table, WorkspaceProvider.__table__)
workspace_egress = cast(Table, WorkspaceEgress.__table__)
revoked_tokens = cast(Table, RevokedToken.__table__)
llm_calls = cast(Table, LlmCall.__table__)
worker_processes = cast(Table, WorkerProcess.__table__)


class BudgetRow(Base):
    """A spending limit; see agentmill.gateway.budgets.Budget."""

    __tablename__ = "budgets"
    __table_args__ = (Index("ix_budgets_workspace", "workspace_id"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, ForeignKey("workspaces.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(16))  # workspace | api_key | user | run
    subject_id: Mapped[str | None] = mapped_column(Id)  # None: each key, user or run
    period: Mapped[str] = mapped_column(String(16))  # total | monthly | daily
    limit_usd: Mapped[Decimal] = mapped_column(Money)
    soft_ratio: Mapped[Decimal] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RateLimitRow(Base):
    """Requests and tokens per minute for a workspace, or a (each) user or API key in it."""

    __tablename__ = "rate_limits"
    __table_args__ = (Index("ix_rate_limits_workspace", "workspace_id"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id, ForeignKey("workspaces.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(16))  # workspace | user | api_key
    subject_id: Mapped[str | None] = mapped_column(Id)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Memory(Base):
    """A text an agent (or a person, over the API) asked a workspace to remember.

    The embedding is a JSON array on every engine; where PostgreSQL has pgvector, a ``vector``
    copy kept by a trigger (``store/pgvector.py``, not in this model: the column exists only
    there) lets search rank in the database. Full-text search uses SQLite FTS5
    (``memories_fts``, kept in step by triggers) or PostgreSQL's ``to_tsvector``, both made in
    migration 0009.
    """

    __tablename__ = "memories"
    __table_args__ = (Index("ix_memories_workspace_created", "workspace_id", "created_at"),)

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Id)
    text: Mapped[str] = mapped_column(Text)
    # ``metadata`` is taken by SQLAlchemy's declarative base.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JsonValue)
    embedding: Mapped[list[float] | None] = mapped_column(JsonValue)
    embedding_model: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Artifact(Base):
    """A file a step wrote (or a member uploaded), kept with its run. The bytes live in the
    artifacts directory (``<dir>/<workspace>/<run>/<name>``, see ``artifacts/store.py``); this
    row is written after them, so a listed artifact always has its file. No foreign key to
    ``runs``: rows go with their workspace, deleted explicitly like memories."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("run_id", "name", name="uq_artifacts_run_name"),
        Index("ix_artifacts_workspace", "workspace_id"),
    )

    id: Mapped[str] = mapped_column(Id, primary_key=True)
    run_id: Mapped[str] = mapped_column(Id)
    root_run_id: Mapped[str] = mapped_column(Id)
    workspace_id: Mapped[str] = mapped_column(Id)
    step_key: Mapped[str | None] = mapped_column(String(96))
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


def described_by_models(name: str | None, kind: str, _parents: Any = None) -> bool:
    """For Alembic's comparisons: False for what no model describes on purpose: the FTS5 tables
    migration 0009 makes on SQLite (a virtual table and its shadow tables), and the pgvector
    column ``store/pgvector.py`` adds where the server has the extension."""
    if kind == "table" and name is not None and name.startswith("memories_fts"):
        return False
    return not (kind == "column" and name == "embedding_vector")


budgets = cast(Table, BudgetRow.__table__)
rate_limits = cast(Table, RateLimitRow.__table__)
memories = cast(Table, Memory.__table__)
artifacts = cast(Table, Artifact.__table__)
invitations = cast(Table, Invitation.__table__)

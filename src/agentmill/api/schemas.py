"""API models, named by purpose: ``XCreate`` (input), ``XUpdate``, ``XPublic`` (output)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from agentmill.domain.permissions import Role


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserCreate(_In):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=8, max_length=256)


class LoginRequest(_In):
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)


class UserPublic(BaseModel):
    id: str
    email: str
    name: str
    created_at: datetime


class TokenPublic(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


class WorkspaceCreate(_In):
    name: str = Field(min_length=1, max_length=200)


class WorkspaceUpdate(_In):
    name: str = Field(min_length=1, max_length=200)


class WorkspacePublic(BaseModel):
    id: str
    name: str
    created_at: datetime
    role: Role = Field(description="Your role in this workspace.")


class MemberCreate(_In):
    email: EmailStr
    role: Role = Role.MEMBER


class MemberUpdate(_In):
    role: Role


class MemberPublic(BaseModel):
    user_id: str
    email: str
    name: str
    role: Role
    joined_at: datetime


class ApiKeyCreate(_In):
    workspace_id: str
    name: str = Field(min_length=1, max_length=200)
    role: Role = Role.MEMBER


class ApiKeyPublic(BaseModel):
    id: str
    workspace_id: str
    name: str
    prefix: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The secret key. It is shown this once; store it now.")


class WorkflowPublic(BaseModel):
    id: str
    workspace_id: str
    name: str
    description: str | None
    latest_version: int
    created_at: datetime
    updated_at: datetime


class WorkflowVersionPublic(BaseModel):
    id: str
    workflow_id: str
    version: int
    spec: dict[str, Any]
    source: str | None
    created_at: datetime


class WorkflowDetail(WorkflowPublic):
    spec: dict[str, Any] = Field(description="The latest version's spec.")


class RunCreate(_In):
    inputs: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, description="Default: the latest version.")


class RunPublic(BaseModel):
    id: str
    workspace_id: str
    workflow_id: str
    workflow: str
    version_id: str
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunPage(BaseModel):
    runs: list[RunPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class StepPublic(BaseModel):
    id: str
    run_id: str
    key: str
    kind: str
    status: str
    attempt: int
    max_attempts: int
    output: Any
    error: str | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    duration_ms: float | None
    child_run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None


class DeadLetterPublic(BaseModel):
    step_id: str
    run_id: str = Field(description="The step's run: a sub-run for a step of a sub-workflow.")
    root_run_id: str
    workflow: str
    workflow_id: str
    step_key: str = Field(description="`each[2]` for a map's item.")
    kind: str
    attempts: int
    error: str | None = Field(description="The last attempt's error.")
    failed_at: datetime
    redrivable: bool = Field(
        description="False when the run went on past the failure (`on_failure: continue`): "
        "the steps after it already ran, and are not run again."
    )


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetterPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class Decision(_In):
    comment: str | None = Field(default=None, max_length=10_000)
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the step's output."
    )


class StepMetrics(BaseModel):
    key: str
    status: str
    attempts: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    duration_ms: float | None


class RunMetrics(BaseModel):
    run_id: str
    status: str
    duration_s: float | None
    input_tokens: int
    output_tokens: int
    cost: Decimal
    steps: list[StepMetrics]


class UsageLinePublic(BaseModel):
    key: str = Field(description="`provider/model`, a workflow name, or `total`.")
    calls: int
    failed_calls: int
    input_tokens: int
    output_tokens: int
    cost: Decimal = Field(description="What the providers charge, in USD.")
    price: Decimal = Field(description="What the workspace is charged (cost plus markup), in USD.")


class UsagePublic(BaseModel):
    workspace_id: str
    since: datetime
    until: datetime
    total: UsageLinePublic
    by_model: list[UsageLinePublic]
    by_workflow: list[UsageLinePublic]


# ---------------------------------------------------------------- spending controls


class BudgetCreate(_In):
    scope: Literal["workspace", "api_key", "user", "run"] = Field(
        description="What the budget limits: the whole workspace, or API keys, users or runs."
    )
    subject_id: str | None = Field(
        default=None,
        description="The one API key, user or run it limits; leave out for *each* of them "
        "(every key gets this budget of its own). Not allowed for workspace budgets.",
    )
    period: Literal["total", "monthly", "daily"] = Field(
        default="monthly", description="The budget starts afresh each period (UTC)."
    )
    limit_usd: Decimal = Field(gt=0, max_digits=18, decimal_places=9)
    soft_ratio: Decimal = Field(
        default=Decimal("0.8"),
        gt=0,
        le=1,
        description="Spending past this share of the limit logs a warning once per period.",
    )


class BudgetPublic(BaseModel):
    id: str
    scope: str
    subject_id: str | None
    period: str
    limit_usd: Decimal
    soft_ratio: Decimal
    spent_usd: Decimal | None = Field(
        description="Charged so far this period; null for a budget of each key, user or run."
    )
    created_at: datetime


class RateLimitCreate(_In):
    scope: Literal["workspace", "api_key", "user"]
    subject_id: str | None = Field(
        default=None, description="The one API key or user; leave out for each of them."
    )
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


class RateLimitPublic(BaseModel):
    id: str
    scope: str
    subject_id: str | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: datetime


class MarkupUpdate(_In):
    markup: Decimal = Field(
        ge=0, le=100, max_digits=12, decimal_places=6, description="0.2 charges 20% over cost."
    )


class MarkupPublic(BaseModel):
    workspace_id: str
    markup: Decimal


class ModelHealthPublic(BaseModel):
    provider: str
    model: str
    state: Literal["closed", "open", "half_open"]
    calls: int = Field(description="Calls in the recent window.")
    error_rate: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    consecutive_failures: int
    last_error: str | None
    retry_in_seconds: float | None = Field(description="While open: when the next probe goes.")


class ProvidersHealth(BaseModel):
    providers: list[str] = Field(description="Configured providers.")
    models: list[ModelHealthPublic] = Field(description="Models called since this process began.")

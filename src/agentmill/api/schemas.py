"""API models, named by purpose: ``XCreate`` (input), ``XUpdate``, ``XPublic`` (output)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from agentmill.api.passwords import password_weakness
from agentmill.domain.permissions import Role


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserCreate(_In):
    email: EmailStr
    name: str = Field(min_length=1, max_length=200)
    password: str = Field(max_length=256)
    invitation: str | None = Field(
        default=None,
        max_length=200,
        description="An invitation's token: the account joins its workspace with its role. "
        "Required when the server registers by invitation only.",
    )

    @field_validator("password")
    @classmethod
    def _hard_to_guess(cls, value: str, info: ValidationInfo) -> str:
        reason = password_weakness(value, email=str(info.data.get("email", "")))
        if reason is not None:
            raise ValueError(reason)
        return value


class RegistrationAccepted(BaseModel):
    message: str


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


class InvitationCreate(_In):
    email: EmailStr
    role: Role = Role.MEMBER


class InvitationPublic(BaseModel):
    id: str
    workspace_id: str
    email: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime


class InvitationCreated(InvitationPublic):
    token: str = Field(
        description="Shown once: the invited person registers with it "
        "(POST /api/v1/auth/register, `invitation`)."
    )


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
    # le: versions are a 32-bit column; a larger number is a 422, not a database error.
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Default: the latest version."
    )


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
        default_factory=dict,
        description="Merged into the step's output; on a step with a form, its answer.",
    )


class FormAnswer(_In):
    answer: dict[str, Any] = Field(description="Must match the step's form (a JSON Schema).")
    comment: str | None = Field(default=None, max_length=10_000)


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


WorkspaceProviderKind = Literal["openai", "openai_compatible", "anthropic", "gemini", "ollama"]
PROVIDER_NAME = r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$"
RESERVED_PROVIDER_NAMES = frozenset({"scripted"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")  # visible ASCII and spaces: no CR/LF injection
_VISIBLE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what a key or URL can be on the wire
# Headers are stored in the clear: these carry credentials, which belong in ``api_key``.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"}
)


def _check_name(name: str) -> str:
    if name in RESERVED_PROVIDER_NAMES:
        raise ValueError(f"{name!r} is reserved for the built-in offline provider")
    return name


def _check_base_url(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if not _VISIBLE.match(url):
        raise ValueError("must be visible ASCII characters without spaces")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (they would be stored unencrypted)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return url


def _check_api_key(key: SecretStr | None) -> SecretStr | None:
    if key is not None and not _VISIBLE.match(key.get_secret_value()):
        raise ValueError("must be visible ASCII characters without spaces")
    return key


def _check_headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.match(name) or len(name) > 128:
            raise ValueError(f"{name[:40]!r} is not a valid header name")
        if name.lower() in _CREDENTIAL_HEADERS:
            raise ValueError(
                f"{name!r} carries a credential; headers are stored unencrypted, use api_key"
            )
        if not _HEADER_VALUE.match(value) or len(value) > 2048:
            raise ValueError(
                f"header {name!r}: value must be visible ASCII, at most 2048 characters"
            )
    return headers


_ProviderName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=PROVIDER_NAME,
        description="Lowercase letters, digits, `-` and `_`: the `name/` prefix of its models.",
    ),
    AfterValidator(_check_name),
]
_BaseUrl = Annotated[
    str | None,
    Field(
        max_length=2048,
        description="The API's base URL (required for openai_compatible and ollama).",
    ),
    AfterValidator(_check_base_url),
]
_ApiKey = Annotated[
    SecretStr | None,
    Field(
        min_length=1,
        max_length=4096,
        description="The provider's API key; write-only, stored encrypted, never returned.",
    ),
    AfterValidator(_check_api_key),
]
_Timeout = Annotated[
    float, Field(gt=0, le=3600, description="Seconds for one request to the provider.")
]
_Headers = Annotated[
    dict[str, str],
    Field(max_length=32, description="Extra HTTP headers, not secret (stored unencrypted)."),
    AfterValidator(_check_headers),
]


class ProviderCreate(_In):
    name: _ProviderName
    kind: WorkspaceProviderKind
    base_url: _BaseUrl = None
    api_key: _ApiKey = None
    timeout: _Timeout = 60.0
    headers: _Headers = Field(default_factory=dict)


class ProviderUpdate(_In):
    """Only the fields sent change; ``"api_key": null`` removes the key."""

    kind: WorkspaceProviderKind | None = None
    base_url: _BaseUrl = None
    api_key: _ApiKey = None
    timeout: _Timeout | None = None
    headers: _Headers | None = None

    @field_validator("kind", "timeout", "headers")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for values sent (defaults are not validated): null is refused here.
        if value is None:
            raise ValueError("may not be null")
        return value


class ProviderPublic(BaseModel):
    id: str
    workspace_id: str
    name: str
    kind: WorkspaceProviderKind
    base_url: str | None
    timeout: float
    headers: dict[str, str]
    has_api_key: bool = Field(description="Whether a key is stored; the key is never returned.")
    created_at: datetime
    updated_at: datetime


# ---------------------------------------------------------------- egress


class EgressUpdate(_In):
    """A workspace's own allowlist for the ``http_request`` tool; it replaces the operator's
    default for this workspace. Entries follow the ``egress`` rules of agentmill.yaml."""

    hosts: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list,
        max_length=500,
        description='Host names or IP addresses; "*.example.org" for any name below '
        'example.org, "*" for any host (addresses must still be public).',
    )
    networks: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=100,
        description="Non-public CIDR blocks to allow (only within what the operator permits).",
    )
    ports: list[Annotated[int, Field(strict=True)]] = Field(
        default_factory=lambda: [80, 443], max_length=100, description="Allowed ports."
    )


class EgressPublic(BaseModel):
    workspace_id: str
    source: Literal["workspace", "operator"] = Field(
        description="`workspace`: its own policy applies; `operator`: the server's default."
    )
    hosts: list[str]
    networks: list[str] = Field(
        description="In effect: a stored network the operator no longer permits is left out."
    )
    ports: list[int]
    permitted_networks: list[str] = Field(
        description="The ranges the operator lets workspaces open (empty: none)."
    )
    updated_at: datetime | None = None


# ---------------------------------------------------------------- memory


class MemoryCreate(_In):
    text: str = Field(
        min_length=1, max_length=20_000, description="What to remember (agents find it again)."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="JSON fields kept with the text (source, topic, ...)."
    )


class MemoryPublic(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    embedding_model: str | None = Field(
        description="The model that embedded it; null when it was stored for word search only."
    )
    created_at: datetime
    score: float | None = Field(
        default=None,
        description="How well it matched a search (higher is closer): cosine similarity with "
        "an embedding model, a full-text rank without one; null when listing.",
    )


class ArtifactPublic(BaseModel):
    id: str
    run_id: str
    name: str = Field(description="A relative path, unique in the run (e.g. charts/q1.png).")
    step: str | None = Field(description="The step that wrote it; null when a member uploaded it.")
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex digest of the content; the download's ETag.")
    media_type: str
    url: str = Field(description="Where to download it (this API, same credentials).")
    created_at: datetime

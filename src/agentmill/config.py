"""Settings from the environment (``AGENTMILL_*``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from agentmill.errors import ConfigError
from agentmill.secret_key import check_secret_key, missing_secret_key


class Settings(BaseSettings):
    """Every setting AgentMill reads; each maps to ``AGENTMILL_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="AGENTMILL_", extra="ignore")

    home: Path = Field(
        default=Path(".agentmill"),
        description="Folder for the embedded SQLite database and local state.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default is a SQLite file under `home`. "
        "`postgresql://…` selects PostgreSQL.",
    )
    sqlite_synchronous: str = Field(
        default="NORMAL",
        description="SQLite `PRAGMA synchronous` in WAL mode. NORMAL survives a killed process; "
        "FULL also survives power loss at the price of an fsync per commit.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a worker's claim on a step lasts without a heartbeat.",
    )
    worker_heartbeat_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often a worker process reports itself alive (the workers table).",
    )
    worker_liveness_seconds: float = Field(
        default=5.0,
        gt=0,
        description="A worker silent this long is declared lost by another live worker, and "
        "the steps it held are taken over at once instead of after their leases expire. "
        "Keep it several heartbeats long (and above the clock skew between hosts).",
    )
    worker_concurrency: int = Field(
        default=1000, gt=0, description="Steps one worker process runs at once."
    )
    poll_interval: float = Field(
        default=0.5, gt=0, description="Seconds between queue polls when no work was signalled."
    )
    queue_url: str | None = Field(
        default=None,
        description="Where workers take steps from: unset (or `sql`) for the database's own "
        "queue; `redis://host:6379/0` for Redis Streams.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for state every process must share: budgets and rate limits. "
        "Defaults to the queue's Redis when AGENTMILL_QUEUE_URL is one; without Redis they are "
        "kept per process (right for one process, the embedded mode).",
    )
    config: Path | None = Field(
        default=None,
        description="The gateway's configuration file (providers, models, prices, fallbacks); "
        "default `agentmill.yaml` in the working directory, when there is one.",
    )
    sandbox: Literal["bwrap", "rlimit-only"] = Field(
        default="bwrap",
        description="How the `python` tool runs model-written code: `bwrap` (namespaces, seccomp, "
        "rlimits; the tool is unavailable where the kernel refuses namespaces) or `rlimit-only` "
        "(an administrator's explicit choice to run code with resource limits alone there).",
    )
    sandbox_max_calls: int = Field(
        default=4,
        ge=1,
        description="`python` tool calls one process runs at once; more wait (and the log says "
        "so). Each call may hold the tool's memory limit, so this times that limit bounds the "
        "sandboxes' memory per process.",
    )
    sandbox_cgroup: Path | None = Field(
        default=None,
        description="A cgroup v2 directory (delegated to the server, no processes of its own) "
        "in which each `python` call gets a cgroup capping its memory and processes as a whole; "
        "unset: the server's own cgroup if it can hold them, else cgroup v1, else a watch.",
    )
    embedding_model: str | None = Field(
        default=None,
        description="The `provider/model` that embeds memories (the memory_store and "
        "memory_search tools, and /workspaces/{ws}/memory), so search finds texts by meaning; "
        "unset: search matches words. `tools: memory: embedding_model:` in agentmill.yaml "
        "overrides it. `scripted/embed` works offline.",
    )
    artifacts_dir: Path | None = Field(
        default=None,
        description="Where the files of artifacts are kept (`<dir>/<workspace>/<run>/<name>`); "
        "default an `artifacts` folder next to the SQLite database (or under `home`). In "
        "distributed mode every API and worker process must see the same folder: a shared "
        "volume mounted at the same path.",
    )
    artifact_max_bytes: int = Field(
        default=100 * 1024 * 1024,
        gt=0,
        description="Largest artifact a step or a member may store, in bytes.",
    )
    allow_private_provider_urls: bool = Field(
        default=False,
        description="Let workspaces register model providers whose base URL is on a loopback, "
        "private, link-local or other non-public address (e.g. a model server on the same "
        "network). Off: such URLs are refused, so a workspace cannot make the server call its "
        "internal services or a cloud metadata endpoint. The operator's own providers in "
        "agentmill.yaml are not affected.",
    )
    operator_emails: str = Field(
        default="",
        description="Comma-separated emails of the server's operators (signed-in users): only "
        "they see operator-wide provider health, every workspace's calls to the operator's "
        "models. Everyone else sees a workspace's own calls.",
    )
    db_pool_size: int = Field(
        default=10,
        gt=0,
        description="PostgreSQL connections each process keeps open (and as many more at peaks). "
        "Mind the server's max_connections across all API and worker processes.",
    )
    secret_key: str | None = Field(
        default=None,
        description="Signs access tokens and encrypts workspaces' provider keys: at least 32 "
        "random characters; weak and example values are refused. Unset: `agentmill up` "
        "generates one in `<home>/secret_key`; `api` and `worker` processes need it set.",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Signs the webhooks of human steps (HMAC-SHA256, X-AgentMill-Signature). "
        "Unset: a key derived from `secret_key` (see README, Human steps).",
    )
    public_url: str | None = Field(
        default=None,
        description="The API's address as people reach it (e.g. https://agentmill.example.com); "
        "webhooks link to it. Unset: their links are paths.",
    )
    registration: Literal["open", "invite", "closed"] | None = Field(
        default=None,
        description="Who may create an account through POST /api/v1/auth/register: `open` "
        "(anyone who reaches the server), `invite` (only with an invitation from a workspace's "
        "owner or admin; the account joins that workspace) or `closed` (nobody: 403). Unset: "
        "`open` when the server listens on a loopback address only, `invite` otherwise.",
    )
    invitation_days: int = Field(
        default=7, gt=0, description="How long an invitation to a workspace can be used."
    )
    access_token_minutes: int = Field(
        default=12 * 60, gt=0, description="How long a login's access token stays valid."
    )
    login_failures_per_account: int = Field(
        default=10,
        gt=0,
        description="Failed logins an account may have within the window; beyond them its "
        "logins answer 429 (Retry-After) until the oldest failure leaves the window.",
    )
    login_failures_per_address: int = Field(
        default=50,
        gt=0,
        description="Failed logins one client address may have within the window, over all "
        "accounts. Counted in Redis when one is configured, so every API process shares them.",
    )
    login_failure_window_seconds: int = Field(
        default=15 * 60, gt=0, description="The window failed logins are counted in."
    )
    password_hash_concurrency: int = Field(
        default=4,
        gt=0,
        description="Password hashes (Argon2, tens of ms of CPU each) computed at once per "
        "process; more wait, so a crowd of logins cannot starve other requests.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest request body the API accepts."
    )
    max_workflow_steps: int = Field(
        default=5_000,
        gt=0,
        description="Most steps a workflow saved through the API may have, its inline "
        "sub-workflows' steps included; past it the API answers 422.",
    )

    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a client has to send a request's headers before the connection "
        "is closed (against slow-header attacks; nginx's client_header_timeout in front does "
        "the same).",
    )
    http_keep_alive: int = Field(
        default=5, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    http_max_connections: int | None = Field(
        default=None,
        gt=0,
        description="Open connections (event streams included) beyond which the API answers "
        "503; unset: no limit.",
    )
    ops_networks: list[str] = Field(
        default=["127.0.0.0/8", "::1/128"],
        description='Client networks (CIDR, as JSON: `["10.0.0.0/8"]`) that may read /metrics '
        "and the details of /health; others get /health's bare status only.",
    )
    ops_token: str | None = Field(
        default=None,
        description="A bearer token that also lets a caller read /metrics and /health's details "
        "(e.g. Prometheus' `authorization` credentials).",
    )

    @field_validator("secret_key")
    @classmethod
    def _strong_secret_key(cls, value: str | None) -> str | None:
        # A ConfigError (not a ValueError) passes through pydantic as it is.
        return None if value is None else check_secret_key(value)

    def secret(self) -> str:
        """The secret key; ConfigError when none was configured (or generated)."""
        if self.secret_key is None:
            raise missing_secret_key("it signs access tokens and encrypts provider keys")
        return self.secret_key

    @property
    def shared_redis_url(self) -> str | None:
        """The Redis that budgets and rate limits live in, if any."""
        if self.redis_url:
            return self.redis_url
        if self.queue_url and self.queue_url.startswith(("redis://", "rediss://")):
            return self.queue_url
        return None

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``<home>/agentmill.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'agentmill.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests replace them with ``get_settings.cache_clear()``).
    A bad ``AGENTMILL_*`` value is a ConfigError naming the variable, not pydantic's report."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(settings_problems(exc)) from None
    except SettingsError as exc:  # a list or mapping setting that is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1).upper() if found else "a setting"
        raise ConfigError(
            f'AGENTMILL_{name}: not valid JSON (lists are given as JSON, e.g. ["10.0.0.0/8"])'
        ) from None


_SECRET_FIELDS = frozenset({"secret_key", "webhook_secret", "ops_token", "database_url"})


def settings_problems(exc: ValidationError) -> str:
    """One line per bad setting: its variable, what is wrong and (unless secret) the value."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        shown = "" if name in _SECRET_FIELDS else f" (got {error.get('input')!r})"
        lines.append(f"AGENTMILL_{name.upper()}: {error['msg']}{shown}")
    return "; ".join(lines)


def read_config_file(path: Path | None) -> tuple[Mapping[str, Any], str]:
    """The mapping in ``agentmill.yaml`` and its name for messages. Without ``path``, the file
    in the working directory, or nothing when there is none; a ``path`` given must exist."""
    if path is None:
        path = Path("agentmill.yaml")
        if not path.exists():
            return {}, str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top")
    return data, str(path)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line with its position (its own text spans several lines and
    quotes the source)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else problem
    if mark is None:
        return text
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}"

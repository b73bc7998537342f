"""Settings from the environment (``AGENTMILL_*``)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentmill.errors import ConfigError

DEFAULT_SECRET = "agentmill-insecure-development-secret"


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
    secret_key: str = Field(
        default=DEFAULT_SECRET,
        description="Signs access tokens. Set your own before serving beyond this machine.",
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
    access_token_minutes: int = Field(
        default=12 * 60, gt=0, description="How long a login's access token stays valid."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest request body the API accepts."
    )

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
    """The process-wide settings (tests replace them with ``get_settings.cache_clear()``)."""
    return Settings()


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
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top")
    return data, str(path)

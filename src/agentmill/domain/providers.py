"""A configured model provider: from agentmill.yaml and the environment (gateway/config.py) or
a workspace's own, kept by the store (store/repositories/providers.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from agentmill.errors import ConfigError

ProviderKind = Literal["openai", "openai_compatible", "anthropic", "gemini", "ollama", "scripted"]
PROVIDER_KINDS: tuple[str, ...] = get_args(ProviderKind)


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """One configured provider; ``name`` is the prefix of its models' names."""

    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0  # seconds for one request to the provider
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise ConfigError(
                f"provider {self.name!r}: unknown kind {self.kind!r} "
                f"(use one of {', '.join(PROVIDER_KINDS)})"
            )
        if self.kind == "openai_compatible" and not self.base_url:
            raise ConfigError(f"provider {self.name!r}: kind openai_compatible needs a base_url")

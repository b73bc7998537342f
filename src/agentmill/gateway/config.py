"""How providers and models are configured: ``agentmill.yaml``, the environment, and workspaces.

``agentmill.yaml`` (in the working directory, or the file ``AGENTMILL_CONFIG`` names)::

    providers:
      openai: {kind: openai}                        # key from OPENAI_API_KEY
      groq:
        kind: openai_compatible
        base_url: https://api.groq.com/openai/v1
        api_key_env: GROQ_API_KEY
      local: {kind: openai_compatible, base_url: "http://127.0.0.1:8000/v1"}
    models:
      local/qwen3-8b:
        price: {input: 0.0, output: 0.0}            # USD per million tokens; required for models
                                                    # genai-prices does not know
      openai/gpt-4o-mini:
        fallbacks: [anthropic/claude-haiku-4-5]
        requests_per_minute: 500
        tokens_per_minute: 200000

Without a ``providers`` section, the providers whose usual variables are set are configured:
``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``), ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY`` (or
``GOOGLE_API_KEY``), ``OLLAMA_BASE_URL`` (or ``OLLAMA_HOST``). ``scripted`` is always there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from agentmill.config import read_config_file
from agentmill.domain.providers import PROVIDER_KINDS as PROVIDER_KINDS
from agentmill.domain.providers import ProviderConfig as ProviderConfig
from agentmill.domain.providers import ProviderKind as ProviderKind
from agentmill.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ModelPrice:
    """USD per million tokens. Cached reads and cache writes default to the input price."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> ModelPrice:
        if not isinstance(value, Mapping) or not {"input", "output"} <= set(value):
            raise ConfigError(f"{where}: price needs 'input' and 'output' (USD per million tokens)")
        unknown = set(value) - {"input", "output", "cached_input", "cache_write"}
        if unknown:
            raise ConfigError(f"{where}: unknown price field(s) {', '.join(sorted(unknown))}")

        def money(key: str) -> Decimal | None:
            if value.get(key) is None:
                return None
            try:
                amount = Decimal(str(value[key]))
            except InvalidOperation:
                raise ConfigError(f"{where}: price.{key} is not a number: {value[key]!r}") from None
            if amount < 0 or not amount.is_finite():
                raise ConfigError(f"{where}: price.{key} must be zero or more")
            return amount

        input_price, output_price = money("input"), money("output")
        assert input_price is not None
        assert output_price is not None
        return cls(
            input=input_price,
            output=output_price,
            cached_input=money("cached_input"),
            cache_write=money("cache_write"),
        )


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Settings for one ``provider/model``."""

    name: str
    price: ModelPrice | None = None
    fallbacks: tuple[str, ...] = ()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelConfig] = field(default_factory=dict)


def load_gateway_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read ``path`` (default: ``agentmill.yaml`` here, when there is one) and the providers'
    usual variables. A ``path`` given that does not exist is an error."""
    data, source = read_config_file(path)
    return parse_gateway_config(data, os.environ if environ is None else environ, source=source)


def parse_gateway_config(
    data: Mapping[str, Any], environ: Mapping[str, str], source: str = "agentmill.yaml"
) -> GatewayConfig:
    raw_providers = data.get("providers")
    providers = (
        _providers_from_env(environ)
        if raw_providers is None
        else {
            name: _provider(name, spec, environ, f"{source}: providers.{name}")
            for name, spec in _mapping(raw_providers, f"{source}: providers").items()
        }
    )
    providers.setdefault("scripted", ProviderConfig(name="scripted", kind="scripted"))
    models = {
        name: _model(name, spec, f"{source}: models.{name}")
        for name, spec in _mapping(data.get("models") or {}, f"{source}: models").items()
    }
    return GatewayConfig(providers=providers, models=models)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    return value


def _provider(name: str, spec: Any, environ: Mapping[str, str], where: str) -> ProviderConfig:
    spec = _mapping(spec or {}, where)
    unknown = set(spec) - {"kind", "base_url", "api_key_env", "timeout", "headers"}
    if unknown:
        hint = " (keys belong in the environment: use api_key_env)" if "api_key" in unknown else ""
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}{hint}")
    kind = spec.get("kind", name)
    default_env = _DEFAULT_KEY_ENV.get(kind)
    key_env = spec.get("api_key_env", default_env)
    timeout = spec.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}.timeout: must be a positive number of seconds, not {timeout!r}")
    try:
        return ProviderConfig(
            name=name,
            kind=kind,
            base_url=spec.get("base_url") or _default_base_url(kind, environ),
            api_key=environ.get(key_env) if key_env else None,
            timeout=float(timeout),
            headers=dict(_mapping(spec.get("headers") or {}, f"{where}.headers")),
        )
    except ConfigError as exc:  # say which file (the provider's own check names only itself)
        source = where.partition(": ")[0] if ": " in where else where
        raise ConfigError(f"{source}: {exc}") from None


def _model(name: str, spec: Any, where: str) -> ModelConfig:
    spec = _mapping(spec or {}, where)
    if "/" not in name:
        raise ConfigError(f"{where}: model names are provider/model")
    unknown = set(spec) - {"price", "fallbacks", "requests_per_minute", "tokens_per_minute"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    fallbacks = spec.get("fallbacks") or []
    if not isinstance(fallbacks, list) or not all(
        isinstance(f, str) and "/" in f for f in fallbacks
    ):
        raise ConfigError(f"{where}: fallbacks must be a list of provider/model names")
    return ModelConfig(
        name=name,
        price=ModelPrice.parse(spec["price"], where) if "price" in spec else None,
        fallbacks=tuple(fallbacks),
        requests_per_minute=_positive(
            spec.get("requests_per_minute"), f"{where}.requests_per_minute"
        ),
        tokens_per_minute=_positive(spec.get("tokens_per_minute"), f"{where}.tokens_per_minute"),
    )


def _positive(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: must be a positive whole number, not {value!r}")
    return value


_DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}


def _default_base_url(kind: str, environ: Mapping[str, str]) -> str | None:
    if kind == "openai":
        return environ.get("OPENAI_BASE_URL")
    if kind == "anthropic":
        return environ.get("ANTHROPIC_BASE_URL")
    if kind == "gemini":
        return environ.get("GEMINI_BASE_URL")
    if kind == "ollama":
        return environ.get("OLLAMA_BASE_URL") or environ.get("OLLAMA_HOST")
    return None


def _providers_from_env(environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    providers: dict[str, ProviderConfig] = {}
    if environ.get("OPENAI_API_KEY"):
        providers["openai"] = _provider("openai", {}, environ, "OPENAI_API_KEY")
    if environ.get("ANTHROPIC_API_KEY"):
        providers["anthropic"] = _provider("anthropic", {}, environ, "ANTHROPIC_API_KEY")
    gemini_key = environ.get("GEMINI_API_KEY") or environ.get("GOOGLE_API_KEY")
    if gemini_key:
        providers["gemini"] = ProviderConfig(
            name="gemini",
            kind="gemini",
            api_key=gemini_key,
            base_url=_default_base_url("gemini", environ),
        )
    if environ.get("OLLAMA_BASE_URL") or environ.get("OLLAMA_HOST"):
        providers["ollama"] = _provider("ollama", {}, environ, "OLLAMA_BASE_URL")
    return providers

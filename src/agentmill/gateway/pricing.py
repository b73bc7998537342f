"""What a call costs: prices from ``genai-prices``, overridable in configuration.

Cost is what the provider charges; price is what the workspace is charged (cost plus its markup).
A price is looked up once per model and kept; ``genai-prices`` is asked per call only for models
whose prices are tiered (by context length), where a flat rate would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from agentmill.errors import ConfigError
from agentmill.gateway.config import ModelConfig, ModelPrice, ProviderConfig
from agentmill.gateway.types import Usage

if TYPE_CHECKING:  # the price tables load on the first priced call, not at start
    import genai_prices
    from genai_prices.types import ModelPrice as GenaiModelPrice
    from genai_prices.types import PriceCalculation

_MILLION = Decimal(1_000_000)
_CENT_FRACTION = Decimal("0.0000000001")  # costs are kept to 1e-10 USD

# Our provider kinds as genai-prices names them; compatible servers are matched by their URL.
_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google"}
_FREE_KINDS = {"ollama", "scripted"}  # local models cost nothing unless configured otherwise


@dataclass(frozen=True, kw_only=True)
class Rates:
    """A model's flat price per million tokens, or ``tiered`` when only genai-prices can say."""

    price: ModelPrice | None
    tiered: bool = False
    source: str = "config"  # config | genai-prices | free


class Pricing:
    """Prices calls. ``models`` are the configured models (their ``price`` overrides)."""

    def __init__(self, models: Mapping[str, ModelConfig] | None = None) -> None:
        self._models = dict(models or {})
        self._rates: dict[tuple[str, str, str | None], Rates] = {}

    def rates(self, model: str, provider: ProviderConfig) -> Rates:
        """The price list for ``provider/model``; ConfigError when nobody knows its price."""
        key = (model, provider.kind, provider.base_url)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = self._look_up(model, provider)
        return rates

    def cost(self, model: str, provider: ProviderConfig, usage: Usage) -> Decimal:
        rates = self.rates(model, provider)
        if rates.tiered:
            return _quantize(_genai_prices(model, provider, usage))
        return cost_at(rates.price, usage)

    def worst_case(
        self, model: str, provider: ProviderConfig, input_tokens: int, output_tokens: int
    ) -> Decimal:
        """The most a call can cost: every input token uncached, all ``output_tokens`` used."""
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        rates = self.rates(model, provider)
        if rates.tiered:
            return _quantize(_genai_prices(model, provider, usage))
        price = rates.price
        if price is None:
            return Decimal(0)
        worst_input = max(price.input, price.cache_write or price.input)
        return _quantize((worst_input * input_tokens + price.output * output_tokens) / _MILLION)

    def _look_up(self, model: str, provider: ProviderConfig) -> Rates:
        configured = self._models.get(model)
        if configured is not None and configured.price is not None:
            return Rates(price=configured.price)
        if provider.kind in _FREE_KINDS:
            return Rates(price=None, source="free")
        name = model.split("/", 1)[1]
        try:
            found = _lookup_genai_prices(name, provider)
        except LookupError:
            raise ConfigError(
                f"no price known for model {model!r}: add it to agentmill.yaml as "
                f"models.{model}.price {{input: USD, output: USD}} per million tokens"
            ) from None
        flat = [
            found.input_mtok,
            found.output_mtok,
            found.cache_read_mtok,
            found.cache_write_mtok,
        ]
        if not all(v is None or isinstance(v, Decimal) for v in flat):
            return Rates(price=None, tiered=True, source="genai-prices")
        input_mtok = found.input_mtok if isinstance(found.input_mtok, Decimal) else Decimal(0)
        output_mtok = found.output_mtok if isinstance(found.output_mtok, Decimal) else Decimal(0)
        cache_read = found.cache_read_mtok if isinstance(found.cache_read_mtok, Decimal) else None
        cache_write = (
            found.cache_write_mtok if isinstance(found.cache_write_mtok, Decimal) else None
        )
        return Rates(
            price=ModelPrice(
                input=input_mtok,
                output=output_mtok,
                cached_input=cache_read,
                cache_write=cache_write,
            ),
            source="genai-prices",
        )


def cost_at(price: ModelPrice | None, usage: Usage) -> Decimal:
    """``usage`` at a flat price; cached reads and cache writes at their own rates."""
    if price is None:
        return Decimal(0)
    fresh = max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    total = (
        price.input * fresh
        + (price.cached_input if price.cached_input is not None else price.input)
        * usage.cached_tokens
        + (price.cache_write if price.cache_write is not None else price.input)
        * usage.cache_write_tokens
        + price.output * usage.output_tokens
    )
    return _quantize(total / _MILLION)


def with_markup(cost: Decimal, markup: Decimal) -> Decimal:
    """The workspace's price for a call: ``markup`` 0.2 charges 20% over cost."""
    return _quantize(cost * (1 + markup))


def _quantize(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT_FRACTION)


def _calculate(usage: genai_prices.Usage, name: str, provider: ProviderConfig) -> PriceCalculation:
    import genai_prices

    provider_id = _PROVIDER_IDS.get(provider.kind)
    if provider_id is None and provider.base_url:
        return genai_prices.calc_price(usage, name, provider_api_url=provider.base_url)
    return genai_prices.calc_price(usage, name, provider_id=provider_id)


def _genai_usage(usage: Usage) -> genai_prices.Usage:
    import genai_prices

    return genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_tokens or None,
        cache_write_tokens=usage.cache_write_tokens or None,
    )


def _lookup_genai_prices(name: str, provider: ProviderConfig) -> GenaiModelPrice:
    import genai_prices

    unit = genai_prices.Usage(input_tokens=1, output_tokens=1)
    return _calculate(unit, name, provider).model_price


def _genai_prices(model: str, provider: ProviderConfig, usage: Usage) -> Decimal:
    return _calculate(_genai_usage(usage), model.split("/", 1)[1], provider).total_price

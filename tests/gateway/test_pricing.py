"""Prices: known models as genai-prices has them (cache reads and writes at their own rates,
tiered models too), configured prices for the rest, a clear error when nobody knows one."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import pytest

from agentmill.errors import ConfigError
from agentmill.gateway.config import ModelConfig, ModelPrice, ProviderConfig, parse_gateway_config
from agentmill.gateway.pricing import Pricing, cost_at, with_markup
from agentmill.gateway.types import Usage

OPENAI = ProviderConfig(name="openai", kind="openai", api_key="sk-x")
ANTHROPIC = ProviderConfig(name="anthropic", kind="anthropic")
GEMINI = ProviderConfig(name="gemini", kind="gemini")
GROQ = ProviderConfig(
    name="groq", kind="openai_compatible", base_url="https://api.groq.com/openai/v1"
)
USAGE = Usage(
    input_tokens=123_456,
    output_tokens=7_890,
    cached_tokens=20_000,
    cache_write_tokens=3_000,
    reasoning_tokens=1_000,
)


@pytest.mark.parametrize(
    ("model", "provider", "provider_id"),
    [
        ("openai/gpt-4o-mini", OPENAI, "openai"),
        ("openai/gpt-4o", OPENAI, "openai"),
        ("anthropic/claude-haiku-4-5", ANTHROPIC, "anthropic"),
        ("anthropic/claude-sonnet-4-5", ANTHROPIC, "anthropic"),  # tiered by context length
        ("gemini/gemini-2.5-flash", GEMINI, "google"),
        ("gemini/gemini-2.5-pro", GEMINI, "google"),  # tiered
    ],
)
def test_known_models_cost_what_genai_prices_says(
    model: str, provider: ProviderConfig, provider_id: str
) -> None:
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=USAGE.input_tokens,
            output_tokens=USAGE.output_tokens,
            cache_read_tokens=USAGE.cached_tokens,
            cache_write_tokens=USAGE.cache_write_tokens,
        ),
        model.split("/", 1)[1],
        provider_id=provider_id,
    ).total_price
    assert Pricing().cost(model, provider, USAGE) == expected


def test_a_compatible_server_is_priced_by_its_url() -> None:
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=500),
        "llama-3.1-8b-instant",
        provider_api_url="https://api.groq.com/openai/v1",
    ).total_price
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert Pricing().cost("groq/llama-3.1-8b-instant", GROQ, usage) == expected


def test_a_configured_price_overrides_and_prices_cache_at_its_rates() -> None:
    price = ModelPrice(
        input=Decimal(2), output=Decimal(8), cached_input=Decimal("0.5"), cache_write=Decimal(3)
    )
    pricing = Pricing({"openai/gpt-4o-mini": ModelConfig(name="openai/gpt-4o-mini", price=price)})
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cached_tokens=400_000)
    # 600k fresh × 2 + 400k cached × 0.5 + 100k out × 8, per million
    assert pricing.cost("openai/gpt-4o-mini", OPENAI, usage) == Decimal("2.2")
    assert cost_at(price, Usage(cache_write_tokens=1_000_000, input_tokens=1_000_000)) == 3


def test_a_model_nobody_prices_is_refused_with_the_fix() -> None:
    local = ProviderConfig(name="local", kind="openai_compatible", base_url="http://10.0.0.5/v1")
    with pytest.raises(ConfigError) as caught:
        Pricing().cost("local/my-finetune", local, Usage(input_tokens=1))
    assert str(caught.value) == (
        "no price known for model 'local/my-finetune': add it to agentmill.yaml as "
        "models.local/my-finetune.price {input: USD, output: USD} per million tokens"
    )


def test_local_and_scripted_models_are_free_unless_priced() -> None:
    ollama = ProviderConfig(name="ollama", kind="ollama")
    assert Pricing().cost("ollama/llama3", ollama, USAGE) == 0
    assert Pricing().worst_case("ollama/llama3", ollama, 10_000, 4_096) == 0


def test_the_worst_case_assumes_no_cache_and_every_output_token() -> None:
    price = ModelPrice(input=Decimal(1), output=Decimal(4), cache_write=Decimal("1.25"))
    pricing = Pricing({"x/m": ModelConfig(name="x/m", price=price)})
    local = ProviderConfig(name="x", kind="openai_compatible", base_url="http://h/v1")
    # Input at the dearer cache-write rate: the call might write the whole prompt to the cache.
    assert pricing.worst_case("x/m", local, 1_000_000, 1_000_000) == Decimal("5.25")


def test_markup_makes_the_price_and_config_errors_name_the_field() -> None:
    assert with_markup(Decimal("0.01"), Decimal("0.2")) == Decimal("0.012")
    with pytest.raises(ConfigError, match=r"models\.x/m: price needs 'input' and 'output'"):
        parse_gateway_config({"models": {"x/m": {"price": {"input": 1}}}}, {})
    with pytest.raises(ConfigError, match="keys belong in the environment: use api_key_env"):
        parse_gateway_config({"providers": {"p": {"kind": "openai", "api_key": "sk"}}}, {})

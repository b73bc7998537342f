"""The offline scripted provider, usage arithmetic, and gateway routing."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from agentmill.errors import RetryableError, StepFailed, UnknownModel
from agentmill.gateway import (
    CallContext,
    ChatRequest,
    ChatResponse,
    Gateway,
    Message,
    Usage,
)
from agentmill.gateway.providers.scripted import ScriptedProvider, estimate_tokens

SYSTEM = "Be brief."
PROMPT = "Tell me   about\n bees."


def request(
    *,
    model: str = "scripted/echo",
    prompt: str = PROMPT,
    options: Mapping[str, Any] | None = None,
    schema: Mapping[str, Any] | None = None,
    attempt: int = 1,
    turn: int = 0,
) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=(Message(role="system", content=SYSTEM), Message(role="user", content=prompt)),
        options=options or {},
        response_schema=schema,
        context=CallContext(run_id="run_1", step_key="s", attempt=attempt, turn=turn),
    )


async def answer(**kwargs: Any) -> str:
    response = await ScriptedProvider().chat(request(**kwargs))
    return response.content


# ---------------------------------------------------------------- the default echo


async def test_the_default_reply_says_plainly_that_no_model_was_called() -> None:
    response = await ScriptedProvider().chat(request(model="scripted/researcher"))
    assert response.content == (
        "[offline: scripted/researcher is scripted, no model was called] Tell me about bees."
    )
    assert response.model == "scripted/researcher"
    assert response.finish_reason == "stop"
    assert response.tool_calls == ()


async def test_the_echo_uses_the_last_user_message_and_shortens_long_prompts() -> None:
    provider = ScriptedProvider()
    response = await provider.chat(
        ChatRequest(
            model="scripted/echo",
            messages=(
                Message(role="user", content="first question"),
                Message(role="assistant", content="an answer"),
                Message(role="user", content="w" * 400),
            ),
        )
    )
    prefix = "[offline: scripted/echo is scripted, no model was called] "
    assert response.content == prefix + "w" * 297 + "..."


async def test_usage_is_estimated_from_the_text() -> None:
    response = await ScriptedProvider().chat(request())
    assert response.usage == Usage(
        input_tokens=estimate_tokens(SYSTEM) + estimate_tokens(PROMPT),
        output_tokens=estimate_tokens(response.content),
    )
    assert (estimate_tokens(""), estimate_tokens("a"), estimate_tokens("abcd")) == (0, 1, 1)
    assert estimate_tokens("abcde") == 2
    assert response.usage.cost == Decimal(0)


# ---------------------------------------------------------------- structured answers

SCHEMAS = {
    "array-of-strings": {
        "type": "object",
        "required": ["tags"],
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
    },
    "required-integer": {
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer", "minimum": 5}},
    },
    "enum": {
        "type": "object",
        "required": ["mood"],
        "properties": {"mood": {"enum": ["happy", "sad"]}},
    },
    "nested-objects": {
        "type": "object",
        "required": ["a"],
        "properties": {
            "a": {
                "type": "object",
                "required": ["b"],
                "properties": {
                    "b": {
                        "type": "object",
                        "required": ["c", "d"],
                        "properties": {"c": {"type": "boolean"}, "d": {"type": "number"}},
                    }
                },
            }
        },
    },
    "array-of-objects": {
        "type": "array",
        "minItems": 4,
        "items": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    },
    "string-min-length": {"type": "string", "minLength": 40},
    "nullable-number": {"type": ["null", "number"], "minimum": 2.5},
    "any-of": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "const": {"const": "fixed"},
    "planner": {
        "type": "object",
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
    },
}


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
async def test_with_a_schema_and_no_reply_the_answer_satisfies_the_schema(
    schema: dict[str, Any],
) -> None:
    value = json.loads(await answer(schema=schema))
    jsonschema.Draft202012Validator(schema).validate(value)


async def test_structured_answers_are_deterministic_and_readable() -> None:
    assert json.loads(await answer(schema=SCHEMAS["array-of-strings"])) == {
        "tags": ["tag 1", "tag 2", "tag 3"]
    }
    assert json.loads(await answer(schema=SCHEMAS["required-integer"])) == {"count": 5}
    assert json.loads(await answer(schema=SCHEMAS["enum"])) == {"mood": "happy"}
    assert json.loads(await answer(schema=SCHEMAS["nested-objects"])) == {
        "a": {"b": {"c": True, "d": 1.0}}
    }


async def test_a_schema_answer_respects_a_small_max_items() -> None:
    schema = {
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
    }
    jsonschema.Draft202012Validator(schema).validate(json.loads(await answer(schema=schema)))


async def test_a_reply_wins_over_the_schema_example() -> None:
    assert await answer(schema=SCHEMAS["enum"], options={"reply": "not json"}) == "not json"


# ---------------------------------------------------------------- scripted replies


async def test_reply_is_a_template_over_prompt_system_attempt_and_turn() -> None:
    reply = "You said '{{ prompt }}' under '{{ system }}' (attempt {{ attempt }}, turn {{ turn }})"
    assert await answer(options={"reply": reply}, attempt=2, turn=1) == (
        f"You said '{PROMPT}' under '{SYSTEM}' (attempt 2, turn 1)"
    )


async def test_a_reply_that_is_one_expression_of_a_non_string_is_sent_as_json() -> None:
    reply = "{{ {'attempt': attempt, 'retried': attempt > 1, 'note': none} }}"
    assert await answer(options={"reply": reply}, attempt=3) == (
        '{"attempt": 3, "retried": true, "note": null}'
    )


async def test_a_reply_with_a_lone_brace_is_sent_as_is() -> None:
    assert await answer(options={"reply": "{ not a template"}) == "{ not a template"


async def test_the_prompt_is_data_inside_a_reply_template() -> None:
    assert await answer(prompt="{{ 7 * 7 }}", options={"reply": "echo: {{ prompt }}"}) == (
        "echo: {{ 7 * 7 }}"
    )


async def test_a_broken_reply_template_fails_the_call_like_any_provider_error() -> None:
    with pytest.raises(StepFailed) as caught:
        await answer(options={"reply": "{{ nope }}"})
    assert str(caught.value) == "scripted reply template: 'nope' is undefined in '{{ nope }}'"


async def test_a_reply_given_as_a_mapping_or_list_is_sent_as_json() -> None:
    content = await answer(options={"reply": {"tasks": ["a", "b"], "n": 2, "ok": True}})
    assert content == '{"tasks": ["a", "b"], "n": 2, "ok": true}'
    assert await answer(options={"reply": [1, "two"]}) == '[1, "two"]'


@pytest.mark.parametrize(
    ("turn", "expected"),
    [
        (0, "first"),
        (1, "second: Tell me   about\n bees."),
        (2, '{"done": true}'),
        (7, '{"done": true}'),
    ],
)
async def test_replies_are_chosen_by_turn_and_the_last_repeats(turn: int, expected: str) -> None:
    replies = ["first", "second: {{ prompt }}", {"done": True}]
    assert await answer(options={"replies": replies}, turn=turn) == expected


async def test_a_reply_can_quote_what_the_tools_answered_to_the_last_turn() -> None:
    base = request(options={"reply": "{{ results | length }}: {{ results | join(' + ') }}"})
    earlier = (
        Message(role="tool", content="old", tool_call_id="c0", name="t"),
        Message(role="assistant", content=""),
        Message(role="tool", content="one", tool_call_id="c1", name="t"),
        Message(role="tool", content="two", tool_call_id="c2", name="t"),
    )
    called = ChatRequest(
        model=base.model,
        messages=(*base.messages, *earlier),
        options=base.options,
        context=base.context,
    )
    assert (await ScriptedProvider().chat(called)).content == "2: one + two"
    assert (await ScriptedProvider().chat(base)).content == "0: "


async def test_scripted_tool_call_arguments_are_templates_too() -> None:
    reply = {
        "tool_calls": [
            {"name": "writer", "arguments": {"task": "Brief on {{ prompt[:9] }}", "n": 2}}
        ]
    }
    response = await ScriptedProvider().chat(request(options={"reply": reply}, turn=1))
    (call,) = response.tool_calls
    assert (call.id, call.name, call.arguments) == (
        "call_1_0",
        "writer",
        {"task": "Brief on Tell me  ", "n": 2},
    )
    with pytest.raises(StepFailed) as caught:
        await answer(
            options={"reply": {"tool_calls": [{"name": "t", "arguments": {"a": "{{ x }}"}}]}}
        )
    assert str(caught.value) == "scripted tool call template: 'x' is undefined in '{{ x }}'"


async def test_an_empty_replies_list_falls_back_to_reply() -> None:
    assert await answer(options={"replies": [], "reply": "fallback"}) == "fallback"


# ---------------------------------------------------------------- scripted failures

RETRYABLE = [
    ("server_error", "503 Service Unavailable (scripted failure)", None),
    ("rate_limit", "429 Too Many Requests (scripted failure)", 0.0),
    ("timeout", "request timed out (scripted failure)", None),
    ("connection", "connection reset by peer (scripted failure)", None),
]
TERMINAL = [
    ("bad_request", "400 Bad Request (scripted failure)"),
    ("auth", "401 Unauthorized (scripted failure)"),
]


@pytest.mark.parametrize(("kind", "message", "retry_after"), RETRYABLE)
async def test_retryable_failures_only_on_the_first_attempts(
    kind: str, message: str, retry_after: float | None
) -> None:
    options = {"fail_attempts": 2, "fail_with": kind}
    for attempt in (1, 2):
        with pytest.raises(RetryableError) as caught:
            await answer(options=options, attempt=attempt)
        assert str(caught.value) == message
        assert caught.value.retry_after == retry_after
        assert not isinstance(caught.value, StepFailed)
    assert "no model was called" in await answer(options=options, attempt=3)


@pytest.mark.parametrize(("kind", "message"), TERMINAL)
async def test_terminal_failures_only_on_the_first_attempts(kind: str, message: str) -> None:
    options = {"fail_attempts": 1, "fail_with": kind}
    with pytest.raises(StepFailed) as caught:
        await answer(options=options, attempt=1)
    assert str(caught.value) == message
    assert not isinstance(caught.value, RetryableError)
    assert "no model was called" in await answer(options=options, attempt=2)


async def test_failures_default_to_a_server_error() -> None:
    with pytest.raises(RetryableError) as caught:
        await answer(options={"fail_attempts": 1})
    assert str(caught.value) == "503 Service Unavailable (scripted failure)"


async def test_without_fail_attempts_nothing_fails() -> None:
    assert "no model was called" in await answer(options={"fail_with": "auth"})


async def test_an_unknown_failure_kind_is_a_step_failure_naming_the_choices() -> None:
    with pytest.raises(StepFailed) as caught:
        await answer(options={"fail_attempts": 1, "fail_with": "meteor"})
    assert str(caught.value) == (
        "unknown scripted failure 'meteor' (use one of "
        "['auth', 'bad_request', 'connection', 'rate_limit', 'server_error', 'timeout'])"
    )


# ---------------------------------------------------------------- latency and price


async def test_latency_delays_the_answer() -> None:
    started = time.perf_counter()
    await answer(options={"latency": 0.05})
    assert time.perf_counter() - started >= 0.05


async def test_latency_delays_a_failure_too() -> None:
    started = time.perf_counter()
    with pytest.raises(RetryableError):
        await answer(options={"latency": 0.05, "fail_attempts": 1})
    assert time.perf_counter() - started >= 0.05


async def test_price_gives_an_exact_decimal_cost() -> None:
    response = await ScriptedProvider().chat(
        request(
            prompt="abcdefgh", options={"reply": "x" * 40, "price": {"input": 2.5, "output": 10}}
        )
    )
    # input: "Be brief." (9 chars) -> 3 tokens, "abcdefgh" -> 2 tokens; output: 40 chars -> 10 tokens
    assert response.usage == Usage(input_tokens=5, output_tokens=10, cost=Decimal("0.0001125"))
    assert response.usage.cost == (Decimal("2.5") * 5 + Decimal(10) * 10) / Decimal(1_000_000)


async def test_price_with_only_an_output_rate() -> None:
    response = await ScriptedProvider().chat(
        request(prompt="abcdefgh", options={"reply": "x" * 40, "price": {"output": "0.6"}})
    )
    assert response.usage.cost == Decimal("0.000006")


# ---------------------------------------------------------------- usage


def test_usages_add_up() -> None:
    call = Usage(input_tokens=10, output_tokens=5, cost=Decimal("0.001"))
    other = Usage(input_tokens=1, output_tokens=2, cost=Decimal("0.0002"))
    total = Usage()
    total += call
    total += other
    assert total == Usage(input_tokens=11, output_tokens=7, cost=Decimal("0.0012"))
    assert total.total_tokens == 18
    assert call == Usage(input_tokens=10, output_tokens=5, cost=Decimal("0.001"))  # unchanged


def test_an_empty_usage_is_zero() -> None:
    assert Usage() == Usage(input_tokens=0, output_tokens=0, cost=Decimal(0))
    assert Usage().total_tokens == 0


# ---------------------------------------------------------------- gateway routing


class Recorder:
    """A provider that answers with the model name it was asked for."""

    name = "recorder"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(
            content=f"recorded {request.model_name}",
            model=request.model,
            usage=Usage(input_tokens=1),
        )


def test_a_request_splits_provider_and_model() -> None:
    req = request(model="openrouter/meta-llama/llama-3")
    assert (req.provider, req.model_name) == ("openrouter", "meta-llama/llama-3")


async def test_the_gateway_routes_by_provider_prefix() -> None:
    recorder = Recorder()
    gateway = Gateway([ScriptedProvider(), recorder])
    scripted = await gateway.chat(request(model="scripted/echo"))
    recorded = await gateway.chat(request(model="recorder/big-model"))
    assert scripted.content.startswith("[offline: scripted/echo is scripted")
    assert recorded.content == "recorded big-model"
    assert [r.model for r in recorder.requests] == ["recorder/big-model"]


async def test_the_default_gateway_has_the_scripted_provider() -> None:
    response = await Gateway().chat(request(model="scripted/anything"))
    assert "no model was called" in response.content


async def test_the_gateway_measures_latency() -> None:
    response = await Gateway().chat(request(options={"latency": 0.05}))
    assert response.latency_ms >= 50


async def test_an_unknown_provider_names_the_configured_ones() -> None:
    gateway = Gateway([ScriptedProvider(), Recorder()])
    with pytest.raises(UnknownModel) as caught:
        await gateway.chat(request(model="openai/gpt-4o"))
    assert str(caught.value) == "unknown provider 'openai' (configured: recorder, scripted)"


async def test_a_gateway_without_providers() -> None:
    with pytest.raises(UnknownModel) as caught:
        await Gateway([]).chat(request(model="scripted/echo"))
    assert str(caught.value) == "unknown provider 'scripted' (configured: none)"


async def test_registering_a_provider_with_the_same_name_replaces_it() -> None:
    first, second = Recorder(), Recorder()
    gateway = Gateway([first])
    gateway.register(second)
    await gateway.chat(request(model="recorder/m"))
    assert (len(first.requests), len(second.requests)) == (0, 1)

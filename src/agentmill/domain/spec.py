"""The workflow spec: what a YAML or JSON workflow file may say.

Models are strict (unknown keys are errors) and frozen once loaded. Cross-field rules (needs,
cycles, template references) live in :mod:`agentmill.domain.validation`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
QUEUE_NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
DEFAULT_QUEUE = "default"
MODEL_NAME_RE = re.compile(r"^(?P<provider>[a-z0-9][a-z0-9_.-]*)/(?P<model>[^\s/][^\s]*)$")


def check_model_name(value: str) -> str:
    """Model names are ``provider/model`` (e.g. ``openai/gpt-4o-mini``, ``scripted/echo``)."""
    if not MODEL_NAME_RE.match(value):
        raise ValueError(
            f"model {value!r} is not of the form 'provider/model' "
            "(for example 'openai/gpt-4o-mini' or 'scripted/echo')"
        )
    return value


def check_queue_name(value: str) -> str:
    """Queue names are 1-32 lowercase letters, digits, ``-`` or ``_`` (e.g. ``gpu``)."""
    if not QUEUE_NAME_RE.match(value):
        raise ValueError(
            f"queue {value!r} must be 1 to 32 lowercase letters, digits, '-' or '_' "
            "(for example 'gpu' or 'rate-limited')"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    ARRAY = "array"
    OBJECT = "object"


class InputSpec(_Strict):
    """A workflow input. Without a ``default`` it is required."""

    type: InputType = InputType.STRING
    description: str | None = None
    default: Any = None
    enum: list[Any] | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class AgentSpec(_Strict):
    """A named model configuration that steps refer to with ``agent:``."""

    model: str
    system: str | None = None
    tools: list[str] = Field(default_factory=list)
    max_turns: int = Field(default=8, ge=1, le=100)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the provider as is (for the scripted provider: latency, reply…).",
    )

    _model = field_validator("model")(check_model_name)

    fallbacks: list[Annotated[str, AfterValidator(check_model_name)]] = Field(default_factory=list)


MCP_SERVER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


class McpServerSpec(_Strict):
    """An MCP server whose tools agents may use (``tools: [mcp:<server>]``).

    Either ``command`` (a program started for each agent step, spoken to over stdio) or ``url``
    (a streamable HTTP endpoint). Values are literal: they are stored with the workflow.
    """

    command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="The program and its arguments (stdio)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the program (it does not inherit the worker's).",
    )
    url: str | None = Field(default=None, description="The server's endpoint (streamable HTTP).")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request.")
    connect_timeout: float = Field(
        default=30, gt=0, le=600, description="Seconds to start, connect and list tools."
    )
    call_timeout: float = Field(default=120, gt=0, le=3600, description="Seconds per tool call.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"url {value!r} must be an http:// or https:// address")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        if self.command is None and self.url is None:
            raise ValueError(
                "give 'command' (a program to start, stdio) or 'url' (streamable HTTP)"
            )
        if self.command is not None and self.url is not None:
            raise ValueError("give either 'command' or 'url', not both")
        if self.command is not None and self.headers:
            raise ValueError("'headers' apply to a 'url' server only")
        if self.url is not None and self.env:
            raise ValueError("'env' applies to a 'command' server only")
        return self


class RetrySpec(_Strict):
    """Retry policy: attempts include the first; delays grow exponentially with jitter."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff: float = Field(default=1.0, ge=0, le=3600, description="First delay in seconds.")
    multiplier: float = Field(default=2.0, ge=1, le=10)
    max_backoff: float = Field(default=60.0, ge=0, le=86400)
    jitter: bool = True


class _Execution(_Strict):
    """Fields every executable step has, including the inner step of a ``map``."""

    retry: RetrySpec | None = None
    timeout: float | None = Field(default=None, gt=0, description="Seconds per attempt.")
    output_schema: dict[str, Any] | None = None
    queue: Annotated[str, AfterValidator(check_queue_name)] = Field(
        default=DEFAULT_QUEUE,
        description="The named queue this step is routed to; only workers serving it run it.",
    )


class _LlmFields(BaseModel):
    model: str | None = None
    agent: str | None = None
    prompt: str
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)


class _AgentFields(BaseModel):
    agent: str
    prompt: str


class _TemplateFields(BaseModel):
    value: Any


class _WorkflowFields(BaseModel):
    workflow: str | None = Field(
        default=None, description="Path of the sub-workflow file, relative to this file."
    )
    spec: WorkflowSpec | None = Field(
        default=None, description="The sub-workflow inline (filled from `workflow` on load)."
    )
    inputs: dict[str, Any] = Field(default_factory=dict)


class _StepCommon(_Execution):
    id: str = Field(pattern=STEP_ID_PATTERN)
    description: str | None = None
    needs: list[str] = Field(default_factory=list)
    when: bool | str | None = None
    on_failure: Literal["fail_run", "continue"] = "fail_run"


class LlmStep(_LlmFields, _StepCommon):
    """One completion from a model (``model:``) or from a named agent's model (``agent:``)."""

    type: Literal["llm"] = "llm"


class AgentStep(_AgentFields, _StepCommon):
    """A named agent with its tool-calling loop (up to ``max_turns`` model turns)."""

    type: Literal["agent"] = "agent"


class TemplateStep(_TemplateFields, _StepCommon):
    """Renders ``value`` (any JSON value; strings are templates) without calling a model."""

    type: Literal["template"] = "template"


class NotifySpec(_Strict):
    """Where to tell people that a human step is waiting: a webhook that gets a signed POST."""

    webhook: str = Field(description="An http:// or https:// URL; checked against egress.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with the POST (e.g. an Authorization header)."
    )

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"webhook {value!r} must be an http:// or https:// address")
        return value


class HumanStep(_StepCommon):
    """Pauses the run until someone approves, rejects or answers its form; output is the
    decision: ``{approved, by, comment}`` plus the form's answer, field by field."""

    type: Literal["human"] = "human"
    message: str | None = None
    on_reject: Literal["continue", "fail"] = Field(
        default="continue",
        description="continue: the step succeeds with approved=false (branch with `when`); "
        "fail: the run fails.",
    )
    form: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Schema (type: object) the answer must match; its properties become "
        "fields of the step's output.",
    )
    # A human step's node returns at once, so "seconds per attempt" would mean nothing here:
    # for this kind, timeout is how long the run waits for a person.
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds to wait for a person before `on_timeout`."
    )
    on_timeout: Literal["fail", "approve", "reject"] = Field(
        default="fail",
        description="What a timeout does: fail the run, approve (with `default` as the answer "
        "of a form), or reject (then `on_reject` applies).",
    )
    default: dict[str, Any] | None = Field(
        default=None,
        description="The form's answer when nobody gives one: applied on a timeout with "
        "on_timeout: approve, and by `agentmill run --auto-approve`.",
    )
    notify: NotifySpec | None = None


class WorkflowStep(_WorkflowFields, _StepCommon):
    """Runs another workflow as a child run; output is the child's outputs."""

    type: Literal["workflow"] = "workflow"


class MapLlm(_LlmFields, _Execution):
    type: Literal["llm"] = "llm"


class MapAgent(_AgentFields, _Execution):
    type: Literal["agent"] = "agent"


class MapTemplate(_TemplateFields, _Execution):
    type: Literal["template"] = "template"


class MapWorkflow(_WorkflowFields, _Execution):
    type: Literal["workflow"] = "workflow"


_KIND_KEYS = (("model", "llm"), ("agent", "agent"), ("value", "template"), ("over", "map"))


def step_kind(value: Any) -> str | None:
    """The step's kind: its ``type`` or, when absent, inferred from its keys."""
    if isinstance(value, BaseModel):
        return str(getattr(value, "type", None))
    if not isinstance(value, dict):
        return None
    if "type" in value:
        return str(value["type"])
    if "workflow" in value or "spec" in value:
        return "workflow"
    for key, kind in _KIND_KEYS:
        if key in value:
            return kind
    return None


InnerStep = Annotated[
    Annotated[MapLlm, Tag("llm")]
    | Annotated[MapAgent, Tag("agent")]
    | Annotated[MapTemplate, Tag("template")]
    | Annotated[MapWorkflow, Tag("workflow")],
    Discriminator(
        step_kind,
        custom_error_type="step_kind",
        custom_error_message="cannot tell the step's kind: give 'type' "
        "(llm, agent, template or workflow)",
    ),
]


class MapStep(_StepCommon):
    """Fans out ``step`` over the list that ``over`` renders to, then collects results in order."""

    type: Literal["map"] = "map"
    over: str
    step: InnerStep
    concurrency: int = Field(default=8, ge=1, le=10_000)


Step = Annotated[
    Annotated[LlmStep, Tag("llm")]
    | Annotated[AgentStep, Tag("agent")]
    | Annotated[TemplateStep, Tag("template")]
    | Annotated[HumanStep, Tag("human")]
    | Annotated[MapStep, Tag("map")]
    | Annotated[WorkflowStep, Tag("workflow")],
    Discriminator(
        step_kind,
        custom_error_type="step_kind",
        custom_error_message="cannot tell the step's kind: give 'type' "
        "(llm, agent, template, human, map or workflow)",
    ),
]

ExecutableStep = LlmStep | AgentStep | TemplateStep | HumanStep | MapStep | WorkflowStep
AnyStep = ExecutableStep | MapLlm | MapAgent | MapTemplate | MapWorkflow


class WorkflowSpec(_Strict):
    """A workflow: inputs, agents, a DAG of steps, and outputs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    agents: dict[str, AgentSpec] = Field(default_factory=dict)
    mcp_servers: dict[str, McpServerSpec] = Field(
        default_factory=dict, description="MCP servers agents name in tools as mcp:<server>."
    )
    steps: list[Step] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="Seconds for the whole run.")

    def step(self, step_id: str) -> ExecutableStep:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


# All field names the spec knows, for "did you mean" hints on unknown keys.
KNOWN_KEYS = frozenset(
    name
    for model in (
        WorkflowSpec,
        InputSpec,
        AgentSpec,
        McpServerSpec,
        RetrySpec,
        LlmStep,
        AgentStep,
        TemplateStep,
        HumanStep,
        NotifySpec,
        MapStep,
        WorkflowStep,
    )
    for name in model.model_fields
)


for _model in (WorkflowStep, MapWorkflow, MapStep, WorkflowSpec):
    _model.model_rebuild()

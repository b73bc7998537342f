"""Loading and validating workflow specs, with every problem located in its source.

Structure is checked by the Pydantic models in :mod:`spec`; the rules that span fields (needs,
cycles, template references, schemas, sub-workflow inputs) are checked here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from agentmill.domain.forms import RESERVED_FIELDS, answer_problem
from agentmill.domain.source import Path as DocPath
from agentmill.domain.source import Positions, load_document
from agentmill.domain.spec import (
    KNOWN_KEYS,
    MCP_SERVER_NAME_RE,
    AgentStep,
    AnyStep,
    HumanStep,
    LlmStep,
    MapAgent,
    MapLlm,
    MapStep,
    MapTemplate,
    MapWorkflow,
    TemplateStep,
    WorkflowSpec,
    WorkflowStep,
    step_kind,
)
from agentmill.domain.templates import TemplateError, references, template_strings
from agentmill.errors import Problem, SpecError

RUN_NAMES = frozenset({"inputs", "steps", "run"})
MAP_NAMES = RUN_NAMES | {"item", "index"}
# Built-in tools; others are named by import path (package.module:function) or as an MCP
# server's (mcp:<server> for all its tools, mcp:<server>/<tool> for one).
KNOWN_TOOLS: frozenset[str] = frozenset(
    {
        "python",
        "http_request",
        "memory_store",
        "memory_search",
        "artifact_write",
        "artifact_read",
        "artifact_list",
    }
)
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
MCP_PREFIX = "mcp:"
AGENT_PREFIX = "agent:"  # another agent of the workflow, as a tool (delegation)
# What every provider accepts as a tool's name: a delegate is offered under its agent's name.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STEP_TAGS = frozenset({"llm", "agent", "template", "human", "map", "workflow"})


def load_workflow_file(path: str | Path) -> WorkflowSpec:
    """Load and validate a workflow file; sub-workflow files are resolved relative to it."""
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise SpecError(
            [Problem(path="", message=f"cannot read file: {exc.strerror}", source=str(path))]
        ) from None
    return _load(text, source=str(path), base_dir=file.resolve().parent, chain=(file.resolve(),))


def load_workflow_text(
    text: str | bytes, *, source: str = "<spec>", base_dir: Path | None = None
) -> WorkflowSpec:
    """Load and validate a workflow from YAML or JSON text."""
    return _load(text, source=source, base_dir=base_dir, chain=())


def _load(
    text: str | bytes, *, source: str, base_dir: Path | None, chain: tuple[Path, ...]
) -> WorkflowSpec:
    data, positions = load_document(text, source=source)
    return parse_spec(data, positions, base_dir=base_dir, chain=chain)


MAX_SUBWORKFLOW_DEPTH = 10  # inline sub-workflows inside sub-workflows, this many levels


def parse_spec(
    data: Any,
    positions: Positions,
    *,
    base_dir: Path | None = None,
    chain: tuple[Path, ...] = (),
    max_steps: int | None = None,
) -> WorkflowSpec:
    """Validate a document already parsed to plain values. Raises SpecError with every problem.

    ``max_steps`` caps the steps of the whole workflow, its inline sub-workflows' included; it
    is checked before anything costly, so an oversized document is refused at once."""
    if not isinstance(data, dict):
        raise SpecError([positions.problem((), "a workflow must be a mapping (name, steps, …)")])
    _check_size(data, positions, max_steps)
    problems = list(_resolve_subworkflows(data, positions, base_dir, chain))
    try:
        spec = WorkflowSpec.model_validate(data)
    except PydanticValidationError as exc:
        problems.extend(_pydantic_problems(exc, data, positions))
        raise SpecError(problems) from None
    problems.extend(check_spec(spec, positions))
    if problems:
        raise SpecError(problems)
    return spec


def _check_size(data: dict[str, Any], positions: Positions, max_steps: int | None) -> None:
    """Count steps and inline nesting without recursion; raise at the first limit passed."""
    total = 0
    pending: list[tuple[DocPath, dict[str, Any], int]] = [((), data, 0)]
    while pending:
        prefix, spec, depth = pending.pop()
        for path, step in _step_dicts(spec):
            total += 1
            if max_steps is not None and total > max_steps:
                raise SpecError(
                    [
                        positions.problem(
                            (*prefix, *path),
                            f"a workflow may have at most {max_steps:,} steps "
                            "(AGENTMILL_MAX_WORKFLOW_STEPS), sub-workflows' steps included",
                        )
                    ]
                )
            inner = step.get("spec")
            if step_kind(step) == "workflow" and isinstance(inner, dict):
                if depth + 1 > MAX_SUBWORKFLOW_DEPTH:
                    raise SpecError(
                        [
                            positions.problem(
                                (*prefix, *path, "spec"),
                                f"sub-workflows are nested more than {MAX_SUBWORKFLOW_DEPTH} "
                                "levels deep",
                            )
                        ]
                    )
                pending.append(((*prefix, *path, "spec"), inner, depth + 1))


# ---------------------------------------------------------------- sub-workflow files


def _step_dicts(data: dict[str, Any]) -> Iterator[tuple[DocPath, dict[str, Any]]]:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        yield ("steps", index), step
        inner = step.get("step")
        if step_kind(step) == "map" and isinstance(inner, dict):
            yield ("steps", index, "step"), inner


def _resolve_subworkflows(
    data: dict[str, Any], positions: Positions, base_dir: Path | None, chain: tuple[Path, ...]
) -> Iterator[Problem]:
    for path, step in _step_dicts(data):
        ref = step.get("workflow")
        if step_kind(step) != "workflow" or not isinstance(ref, str):
            continue
        if "spec" in step:
            yield positions.problem((*path, "spec"), "give either 'workflow' (a file) or 'spec'")
            continue
        if base_dir is None:
            yield positions.problem(
                (*path, "workflow"),
                f"sub-workflow file {ref!r} cannot be resolved here; inline it with 'spec:'",
            )
            continue
        file = (base_dir / ref).resolve()
        if file in chain:
            names = " -> ".join(p.name for p in (*chain, file))
            yield positions.problem(
                (*path, "workflow"), f"sub-workflows include each other: {names}"
            )
            continue
        if not file.is_file():
            yield positions.problem((*path, "workflow"), f"sub-workflow file {ref!r} not found")
            continue
        try:
            step["spec"] = _load(
                file.read_bytes(), source=str(file), base_dir=file.parent, chain=(*chain, file)
            )
        except SpecError as exc:
            yield positions.problem((*path, "workflow"), f"sub-workflow {ref!r} is invalid")
            yield from exc.problems


# ---------------------------------------------------------------- structural (pydantic) problems


def _pydantic_problems(
    exc: PydanticValidationError, data: Any, positions: Positions
) -> Iterator[Problem]:
    for error in exc.errors(include_url=False):
        path = _clean_loc(data, error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            key = str(path[-1]) if path else "?"
            yield positions.problem(path, f"unknown key {key!r}{_did_you_mean(key, KNOWN_KEYS)}")
        elif kind == "missing":
            yield positions.problem(path, f"missing required key {path[-1]!r}")
        elif kind == "string_pattern_mismatch" and path and path[-1] == "id":
            yield positions.problem(
                path,
                f"step id {error['input']!r} must start with a letter or '_' and contain only "
                "letters, digits and '_' (it is used in templates as steps.<id>)",
            )
        else:
            message = error["msg"].removeprefix("Value error, ")
            yield positions.problem(path, message)


def _clean_loc(data: Any, loc: tuple[int | str, ...]) -> DocPath:
    """Map Pydantic's error location to a document path, dropping union tags."""
    out: list[str | int] = []
    current = data
    for part in loc:
        at_union = bool(out) and (
            (isinstance(out[-1], int) and len(out) >= 2 and out[-2] == "steps") or out[-1] == "step"
        )
        if (
            at_union
            and isinstance(current, dict)
            and part in _STEP_TAGS
            and part == step_kind(current)
        ):
            continue
        out.append(part)
        current = _child(current, part)
    return tuple(out)


def _child(value: Any, part: int | str) -> Any:
    if isinstance(value, dict):
        return value.get(part)
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, [c for c in choices if c != word], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- cross-field rules


def check_spec(spec: WorkflowSpec, positions: Positions, prefix: DocPath = ()) -> list[Problem]:
    """Every rule that spans fields; returns the problems found (empty when valid)."""
    checker = _Checker(spec, positions, prefix)
    checker.run()
    return checker.problems


class _Checker:
    def __init__(self, spec: WorkflowSpec, positions: Positions, prefix: DocPath) -> None:
        self.spec = spec
        self.positions = positions
        self.prefix = prefix
        self.problems: list[Problem] = []
        self.index = {step.id: i for i, step in reversed(list(enumerate(spec.steps)))}
        self.ancestor_bits: dict[str, int] = {}
        self.bit: dict[str, int] = {}

    def add(self, path: DocPath, message: str) -> None:
        self.problems.append(self.positions.problem((*self.prefix, *path), message))

    def run(self) -> None:
        self._inputs()
        self._ids_and_needs()
        self._cycles()
        self._compute_ancestors()
        self._mcp_server_names()
        for agent_name, agent in self.spec.agents.items():
            for k, tool in enumerate(agent.tools):
                if tool.startswith(AGENT_PREFIX):
                    self._delegate(("agents", agent_name, "tools", k), agent_name, tool)
                elif tool.startswith(MCP_PREFIX):
                    self._mcp_tool(("agents", agent_name, "tools"), tool)
                elif tool not in KNOWN_TOOLS and not _IMPORT_PATH.fullmatch(tool):
                    self.add(
                        ("agents", agent_name, "tools"),
                        f"unknown tool {tool!r} (built in: {', '.join(sorted(KNOWN_TOOLS))}; "
                        "a function as package.module:function; or mcp:<server>)",
                    )
            if agent.system:
                self._template(
                    ("agents", agent_name, "system"), agent.system, None, {"inputs", "run"}
                )
        self._delegation_cycles()
        for i, step in enumerate(self.spec.steps):
            self._step(("steps", i), step, step.id, RUN_NAMES)
            if isinstance(step, MapStep):
                self._template(("steps", i, "over"), step.over, step.id, RUN_NAMES)
                self._step(("steps", i, "step"), step.step, step.id, MAP_NAMES)
        for key, value in self.spec.outputs.items():
            for rel, text in template_strings(value):
                self._template(("outputs", key, *rel), text, None, RUN_NAMES)

    def _delegate(self, path: DocPath, agent: str, tool: str) -> None:
        target = tool.removeprefix(AGENT_PREFIX)
        if target not in self.spec.agents:
            hint = _did_you_mean(target, self.spec.agents)
            self.add(path, f"tool {tool!r}: agent {target!r} is not defined under 'agents'{hint}")
        elif target == agent:
            self.add(path, f"agent {agent!r} cannot delegate to itself")
        elif not _TOOL_NAME.fullmatch(target):
            self.add(
                path,
                f"tool {tool!r}: agent {target!r} is offered to the model as a tool by its "
                "name, which must be 1 to 64 letters, digits, '-' or '_'",
            )

    def _delegation_cycles(self) -> None:
        """Agents that delegate to each other, directly or through others, would never end."""
        graph = {
            name: [
                (k, ref)
                for k, tool in enumerate(agent.tools)
                if tool.startswith(AGENT_PREFIX)
                and (ref := tool.removeprefix(AGENT_PREFIX)) in self.spec.agents
                and ref != name
            ]
            for name, agent in self.spec.agents.items()
        }
        for name, k, cycle in _back_edges(graph):
            self.add(
                ("agents", name, "tools", k),
                "agents delegate to each other in a cycle: " + " -> ".join(cycle),
            )

    def _mcp_server_names(self) -> None:
        for name in self.spec.mcp_servers:
            if not MCP_SERVER_NAME_RE.match(name):
                self.add(
                    ("mcp_servers", name),
                    f"MCP server name {name!r} must start with a letter and have at most 32 "
                    "letters, digits, '-' or '_' (it prefixes its tools' names)",
                )

    def _mcp_tool(self, path: DocPath, tool: str) -> None:
        server, slash, name = tool.removeprefix(MCP_PREFIX).partition("/")
        if server not in self.spec.mcp_servers:
            hint = _did_you_mean(server, self.spec.mcp_servers)
            self.add(
                path,
                f"tool {tool!r}: MCP server {server!r} is not declared under 'mcp_servers'{hint}",
            )
        elif slash and (not name or "/" in name):
            self.add(
                path,
                f"tool {tool!r}: write mcp:{server} for all the server's tools or "
                f"mcp:{server}/<tool> for one",
            )

    def _inputs(self) -> None:
        for name, spec in self.spec.inputs.items():
            if not spec.required and spec.default is not None:
                problem = check_input_value(spec.type, spec.default)
                if problem:
                    self.add(("inputs", name, "default"), f"default {problem}")
                elif spec.enum is not None and spec.default not in spec.enum:
                    self.add(
                        ("inputs", name, "default"),
                        f"default {spec.default!r} is not one of {spec.enum!r}",
                    )

    def _ids_and_needs(self) -> None:
        for i, step in enumerate(self.spec.steps):
            first = self.index[step.id]
            if first != i:
                self.add(
                    ("steps", i, "id"), f"duplicate step id {step.id!r} (first at steps[{first}])"
                )
            listed: set[str] = set()
            for k, need in enumerate(step.needs):
                if need in listed:
                    self.add(
                        ("steps", i, "needs", k), f"step {step.id!r} lists {need!r} twice in needs"
                    )
                    continue
                listed.add(need)
                if need == step.id:
                    self.add(("steps", i, "needs", k), f"step {step.id!r} needs itself")
                elif need not in self.index:
                    hint = _did_you_mean(need, self.index)
                    self.add(
                        ("steps", i, "needs", k),
                        f"step {step.id!r} needs {need!r}, which is not a step{hint}",
                    )

    def _cycles(self) -> set[str]:
        graph = {
            s.id: [n for n in s.needs if n in self.index and n != s.id]
            for i, s in enumerate(self.spec.steps)
            if self.index[s.id] == i
        }
        cyclic: set[str] = set()
        reported: set[frozenset[str]] = set()
        indexed = {node: list(enumerate(needs)) for node, needs in graph.items()}
        for _node, _k, loop in _back_edges(indexed):
            cycle = loop[:-1]
            cyclic.update(cycle)
            if frozenset(cycle) not in reported:
                reported.add(frozenset(cycle))
                # Print in execution order: a -> b means b needs a.
                order = [*reversed(cycle), cycle[-1]]
                self.add(("steps", self.index[order[0]], "needs"), "cycle: " + " -> ".join(order))
        return cyclic

    def _compute_ancestors(self) -> None:
        """Each acyclic step's ancestors as a bit set (an int over step positions), built in
        topological order without recursion: linear in steps and needs, and n²/8 bytes at
        worst (a 5,000-step chain: 3 MB)."""
        by_id = {s.id: s for s in reversed(self.spec.steps)}
        bit = {step_id: 1 << k for k, step_id in enumerate(by_id)}
        needs = {
            step_id: [n for n in step.needs if n in by_id and n != step_id]
            for step_id, step in by_id.items()
        }
        waiting = {step_id: len(ns) for step_id, ns in needs.items()}
        needed_by: dict[str, list[str]] = {step_id: [] for step_id in by_id}
        for step_id, ns in needs.items():
            for need in ns:
                needed_by[need].append(step_id)
        ready = [step_id for step_id, count in waiting.items() if count == 0]
        while ready:
            step_id = ready.pop()
            mask = 0
            for need in needs[step_id]:
                mask |= self.ancestor_bits[need] | bit[need]
            self.ancestor_bits[step_id] = mask
            for later in needed_by[step_id]:
                waiting[later] -= 1
                if waiting[later] == 0:
                    ready.append(later)
        # Steps on or below a cycle never become ready: they have no ancestor set, and their
        # references are not checked for being upstream (the cycle is reported instead).
        self.bit = bit

    def _is_upstream(self, ref: str, owner: str) -> bool | None:
        """Whether ``ref`` is an ancestor of ``owner``; None when unknown (a cycle)."""
        mask = self.ancestor_bits.get(owner)
        if mask is None:
            return None
        return bool(mask & self.bit[ref])

    def _step(self, path: DocPath, step: AnyStep, owner: str, names: frozenset[str]) -> None:
        def tmpl(field: str, value: Any) -> None:
            for rel, text in template_strings(value):
                self._template((*path, field, *rel), text, owner, names)

        if isinstance(step, (LlmStep, MapLlm)):
            if step.model is None and step.agent is None:
                self.add(path, f"step {owner!r} needs 'model' or 'agent'")
            tmpl("prompt", step.prompt)
            tmpl("system", step.system)
        if (
            isinstance(step, (LlmStep, MapLlm, AgentStep, MapAgent))
            and step.agent is not None
            and step.agent not in self.spec.agents
        ):
            hint = _did_you_mean(step.agent, self.spec.agents)
            self.add((*path, "agent"), f"agent {step.agent!r} is not defined under 'agents'{hint}")
        if isinstance(step, (AgentStep, MapAgent)):
            tmpl("prompt", step.prompt)
        if isinstance(step, (TemplateStep, MapTemplate)):
            tmpl("value", step.value)
        if isinstance(step, HumanStep):
            tmpl("message", step.message)
            self._human(path, step)
        if isinstance(step, (WorkflowStep, MapWorkflow)):
            tmpl("inputs", step.inputs)
            self._subworkflow(path, step)
        when = getattr(step, "when", None)
        if isinstance(when, str):
            tmpl("when", when)
        if step.output_schema is not None:
            self._schema((*path, "output_schema"), step.output_schema)

    def _subworkflow(self, path: DocPath, step: WorkflowStep | MapWorkflow) -> None:
        if step.spec is None:
            if step.workflow is None:
                self.add(path, "a workflow step needs 'workflow' (a file) or 'spec' (inline)")
            return  # the file's own problems were reported when it was loaded
        declared = step.spec.inputs
        for name in step.inputs:
            if name not in declared:
                hint = _did_you_mean(name, declared)
                self.add(
                    (*path, "inputs", name),
                    f"sub-workflow {step.spec.name!r} has no input {name!r}{hint}",
                )
        for name, spec in declared.items():
            if spec.required and name not in step.inputs:
                self.add((*path, "inputs"), f"sub-workflow {step.spec.name!r} needs input {name!r}")
        if step.workflow is None:  # inline: check it here, with positions under this step
            self.problems.extend(
                check_spec(step.spec, self.positions, (*self.prefix, *path, "spec"))
            )

    def _schema(self, path: DocPath, schema: dict[str, Any]) -> bool:
        import jsonschema  # only forms have schemas; loading it costs a run without one 30 ms

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
            self.add(
                (*path, *exc.path),
                f"invalid JSON Schema{(' at ' + where) if where else ''}: {exc.message}",
            )
            return False
        return True

    def _human(self, path: DocPath, step: HumanStep) -> None:
        """A form is an object schema; its default matches it; on_timeout has a timeout."""
        if step.on_timeout != "fail" and step.timeout is None:
            self.add((*path, "on_timeout"), "on_timeout applies only with a 'timeout' (seconds)")
        if step.default is not None and step.form is None:
            self.add((*path, "default"), "'default' is the answer to a 'form'; this step has none")
        if step.form is None:
            return
        if step.form.get("type") != "object":
            self.add((*path, "form"), "a form must be a JSON Schema with type: object")
            return
        if not self._schema((*path, "form"), step.form):
            return
        properties = step.form.get("properties")
        for name in RESERVED_FIELDS:
            if isinstance(properties, dict) and name in properties:
                self.add(
                    (*path, "form", "properties", name),
                    f"form field {name!r} is reserved: the step's output has it already "
                    f"(reserved: {', '.join(RESERVED_FIELDS)})",
                )
        if step.default is not None:
            problem = answer_problem(step.form, step.default)
            if problem is not None:
                where, message = problem
                self.add(
                    (*path, "default"), f"default does not match the form at {where}: {message}"
                )
        elif step.on_timeout == "approve":
            self.add(
                (*path, "on_timeout"),
                "on_timeout: approve on a form step needs a 'default' answer to apply",
            )

    def _template(
        self, path: DocPath, text: str, owner: str | None, names: frozenset[str] | set[str]
    ) -> None:
        try:
            refs = references(text)
        except TemplateError as exc:
            self.add(path, str(exc))
            return
        if refs.internals:  # an escape attempt: say only that
            for name in sorted(refs.internals):
                self.add(path, f"not allowed in a template: {name!r} is a Python internal")
            return
        for name in sorted(refs.names - set(names)):
            available = ", ".join(sorted(names))
            self.add(path, f"unknown name {name!r} in template (available: {available})")
        for name in sorted(refs.inputs):
            if name not in self.spec.inputs:
                hint = _did_you_mean(name, self.spec.inputs)
                self.add(path, f"template refers to inputs.{name}, which is not an input{hint}")
        for ref in sorted(refs.steps):
            if ref not in self.index:
                hint = _did_you_mean(ref, self.index)
                self.add(path, f"template refers to steps.{ref}, which is not a step{hint}")
            elif owner is not None and ref == owner:
                self.add(path, f"step {owner!r} refers to its own output")
            elif owner is not None and self._is_upstream(ref, owner) is False:
                self.add(
                    path,
                    f"step {owner!r} refers to steps.{ref}, which is not upstream of it "
                    f"(add {ref!r} to its needs)",
                )


def _back_edges(
    graph: dict[str, list[tuple[int, str]]],
) -> Iterator[tuple[str, int, list[str]]]:
    """Depth-first search without recursion (a 20,000-step chain is 20,000 deep): yields
    ``(node, k, cycle)`` for each edge ``k`` of ``node`` that closes a cycle, where ``cycle``
    is the path from the edge's target round to it again."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in graph:
        if root in state:
            continue
        state[root] = 1
        path = [root]
        frames = [iter(graph[root])]
        while frames:
            for k, ref in frames[-1]:
                if state.get(ref) == 1:
                    yield path[-1], k, [*path[path.index(ref) :], ref]
                elif ref not in state and ref in graph:
                    state[ref] = 1
                    path.append(ref)
                    frames.append(iter(graph[ref]))
                    break
            else:
                frames.pop()
                state[path.pop()] = 2


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def check_input_value(kind: str, value: Any) -> str | None:
    """A message if ``value`` is not of the input type ``kind``, else None."""
    expected = _JSON_TYPES[kind]
    if isinstance(value, bool) and kind != "boolean":
        return f"{value!r} is not of type {kind}"
    if not isinstance(value, expected):
        return f"{value!r} is not of type {kind}"
    return None

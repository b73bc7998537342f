"""A workflow version prepared for execution: the DAG's edges and what each step's templates read.

Compiled once per (version, sub-workflow path) and shared by every run of it; immutable.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentmill.domain.spec import (
    AnyStep,
    ExecutableStep,
    MapStep,
    MapWorkflow,
    WorkflowSpec,
    WorkflowStep,
)
from agentmill.domain.templates import references, template_strings


@dataclass(frozen=True)
class CompiledWorkflow:
    spec: WorkflowSpec
    steps: Mapping[str, ExecutableStep]
    dependents: Mapping[str, tuple[str, ...]]
    roots: tuple[str, ...]
    reads: Mapping[str, frozenset[str]]  # step id -> the steps its templates read
    output_reads: frozenset[str]
    # step id -> the upstream steps whose ``.artifacts`` its templates may read
    artifact_reads: Mapping[str, frozenset[str]]

    @classmethod
    def build(cls, spec: WorkflowSpec) -> CompiledWorkflow:
        steps = {step.id: step for step in spec.steps}
        dependents: dict[str, list[str]] = {step_id: [] for step_id in steps}
        for step in spec.steps:
            for need in step.needs:
                dependents[need].append(step.id)
        reads = {step.id: _reads(step) for step in spec.steps}
        return cls(
            spec=spec,
            steps=steps,
            dependents={k: tuple(v) for k, v in dependents.items()},
            roots=tuple(step.id for step in spec.steps if not step.needs),
            reads=reads,
            output_reads=frozenset(_steps_read(spec.outputs)),
            artifact_reads={step.id: _artifact_reads(step, reads[step.id]) for step in spec.steps},
        )

    def inner(self, spec_id: str) -> AnyStep:
        """The step a map child executes."""
        step = self.steps[spec_id]
        assert isinstance(step, MapStep)
        return step.step

    def subworkflow(self, path: str) -> WorkflowSpec:
        """The sub-workflow spec at ``path`` (``a`` for step a, ``a.step`` for a map's inner step)."""
        spec: WorkflowSpec = self.spec
        step_id, _, rest = path.partition(".")
        step: Any = spec.step(step_id)
        if rest == "step":
            step = step.step
        assert isinstance(step, (WorkflowStep, MapWorkflow))
        assert step.spec is not None
        return step.spec


def _steps_read(value: Any) -> set[str]:
    found: set[str] = set()
    for _path, text in template_strings(value):
        found |= references(text).steps
    return found


def _reads(step: ExecutableStep) -> frozenset[str]:
    payload = step.model_dump(exclude={"spec", "output_schema"})
    return frozenset(_steps_read(payload))


def _artifact_reads(step: ExecutableStep, reads: frozenset[str]) -> frozenset[str]:
    """A cheap superset: every step read by a step whose templates mention ``artifacts``
    (loading a few references too many costs one small query; missing one breaks a template)."""
    payload = step.model_dump(exclude={"spec", "output_schema"})
    if any("artifacts" in text for _path, text in template_strings(payload)):
        return reads
    return frozenset()


class WorkflowRegistry:
    """Compiled workflows by (version id, spec path), loaded on first use; thread-safe."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], CompiledWorkflow] = {}
        self._lock = threading.Lock()

    def cached(self, version_id: str, spec_path: str = "") -> CompiledWorkflow | None:
        """The compiled workflow if it is already loaded (no database needed)."""
        return self._cache.get((version_id, spec_path))

    def get(self, version_id: str, spec_path: str, load: Any) -> CompiledWorkflow:
        """``load(version_id)`` returns the version's spec dict when it is not cached yet."""
        key = (version_id, spec_path)
        found = self._cache.get(key)
        if found is not None:
            return found
        root = self._cache.get((version_id, ""))
        if root is None:
            root = CompiledWorkflow.build(WorkflowSpec.model_validate(load(version_id)))
        compiled = root
        for part in [p for p in spec_path.split("/") if p]:  # a/b: sub-workflow b inside a
            compiled = CompiledWorkflow.build(compiled.subworkflow(part))
        with self._lock:
            self._cache.setdefault((version_id, ""), root)
            self._cache.setdefault(key, compiled)
        return compiled

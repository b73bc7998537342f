"""Safe YAML/JSON loading that remembers where every value came from.

PyYAML composes the document into nodes (which carry line and column); we build plain Python
values from those nodes ourselves so that only the standard YAML tags are accepted, duplicate
keys are reported, and size, depth and alias expansion are bounded (decision 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from agentmill.errors import Problem

MAX_SOURCE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000

Path = tuple[str | int, ...]

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Positions:
    """Line and column (1-based) of every value, keyed by its path in the document."""

    source: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path) -> tuple[int | None, int | None]:
        """The position of ``path`` or of its nearest located ancestor."""
        for end in range(len(path), -1, -1):
            mark = self.marks.get(path[:end])
            if mark:
                return mark
        return None, None

    def problem(self, path: Path, message: str) -> Problem:
        line, column = self.locate(path)
        return Problem(
            path=format_path(path), message=message, line=line, column=column, source=self.source
        )


def format_path(path: Path) -> str:
    """``('steps', 2, 'agent')`` → ``steps[2].agent``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Builder:
    def __init__(self, positions: Positions) -> None:
        self.positions = positions
        self.problems: list[Problem] = []
        self.nodes = 0
        self._constructor = yaml.SafeLoader("")

    def _mark(self, path: Path, node: yaml.Node) -> None:
        self.positions.marks.setdefault(
            path, (node.start_mark.line + 1, node.start_mark.column + 1)
        )

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(f"document expands to more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise _TooBig(f"document is nested deeper than {MAX_DEPTH} levels")
        self._mark(path, node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                self.problems.append(
                    self.positions.problem(path, f"YAML tag {node.tag!r} is not allowed")
                )
                return None
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag == "tag:yaml.org,2002:timestamp":
            return str(node.value)  # dates stay text; templates and JSON have no date type
        if node.tag not in _SCALAR_TAGS:
            self.problems.append(
                self.positions.problem(path, f"YAML tag {node.tag!r} is not allowed")
            )
            return None
        try:
            return self._constructor.construct_object(node)
        except (ValueError, KeyError, yaml.YAMLError):
            kind = node.tag.rsplit(":", 1)[-1]
            self.problems.append(
                self.positions.problem(path, f"{node.value!r} is not a valid {kind}")
            )
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        if node.tag != "tag:yaml.org,2002:map":
            self.problems.append(
                self.positions.problem(path, f"YAML tag {node.tag!r} is not allowed")
            )
        out: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    self.positions.problem(path, "mapping keys must be plain strings")
                )
                continue
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.positions.marks.setdefault(
                    (*path, "<<"), (line, key_node.start_mark.column + 1)
                )
                self.problems.append(
                    self.positions.problem(
                        (*path, "<<"),
                        "YAML merge keys ('<<') are not supported; write the keys out",
                    )
                )
                continue
            key_value = self._scalar(key_node, (*path, str(key_node.value)))
            if key_value is None and key_node.tag not in _SCALAR_TAGS:
                continue
            key = str(key_value)
            if key in first_seen:
                self.positions.marks[(*path, key)] = (line, key_node.start_mark.column + 1)
                self.problems.append(
                    self.positions.problem(
                        (*path, key),
                        f"duplicate key {key!r} (first given on line {first_seen[key]})",
                    )
                )
                continue
            first_seen[key] = line
            self._mark((*path, key), key_node)
            out[key] = self.build(value_node, (*path, key), depth + 1)
        return out


class _TooBig(Exception):
    pass


def load_document(text: str | bytes, *, source: str = "<spec>") -> tuple[Any, Positions]:
    """Parse YAML (or JSON) safely. Raises ``SpecError`` with the line and column of problems."""
    from agentmill.errors import SpecError

    positions = Positions(source=source)
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_SOURCE_BYTES:
        raise SpecError(
            [
                Problem(
                    path="", message=f"file is larger than {MAX_SOURCE_BYTES} bytes", source=source
                )
            ]
        )
    try:
        node = yaml.compose(raw.decode("utf-8"), Loader=_SafeLoader)
    except UnicodeDecodeError as exc:
        raise SpecError(
            [Problem(path="", message=f"file is not UTF-8: {exc}", source=source)]
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        start = exc.context_mark
        if start is not None and mark is not None and start.line != mark.line:
            message += f" (it started at line {start.line + 1}, column {start.column + 1})"
        raise SpecError(
            [
                Problem(
                    path="",
                    message=f"invalid YAML: {message}",
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                    source=source,
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(path="", message=f"invalid YAML: {exc}", source=source)]) from None
    if node is None:
        raise SpecError([Problem(path="", message="file is empty", source=source)])
    builder = _Builder(positions)
    try:
        data = builder.build(node, (), 0)
    except _TooBig as exc:
        raise SpecError([Problem(path="", message=str(exc), source=source)]) from None
    if builder.problems:
        raise SpecError(builder.problems)
    return data, positions

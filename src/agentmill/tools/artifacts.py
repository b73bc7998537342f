"""``artifact_write``, ``artifact_read`` and ``artifact_list``: files an agent keeps with its run.

An artifact belongs to the run the calling step is part of; later steps get references to it
(``{{ steps.<id>.artifacts }}``) and people download it over the API. There is no argument a
model can give to reach another run's files: the run comes from the step, and names are
checked (no absolute paths, no ``..``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from agentmill.artifacts import ArtifactStore, artifact_ref
from agentmill.artifacts.names import MAX_NAME
from agentmill.tools.base import ToolContext, ToolResult, ToolUnavailable

READ_LIMIT = 100_000  # bytes of an artifact artifact_read returns at most

_NAME = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME,
    "description": "The artifact's name: a relative path such as report.md or charts/q1.csv.",
}


def _store(context: ToolContext) -> tuple[ArtifactStore, str]:
    if context.artifacts is None or context.run_id is None:
        raise ToolUnavailable("artifacts need a run (the tool runs inside a step)")
    return context.artifacts, context.run_id


class ArtifactWriteTool:
    """``artifact_write``: keep a file with the run."""

    name = "artifact_write"
    description = (
        "Save a file (a report, data, an image) as an artifact of this run: people can download "
        "it and later steps receive a reference to it. Writing a name again replaces the file. "
        "Give text as is, or binary data base64-encoded with encoding 'base64'."
    )
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "name": _NAME,
            "content": {"type": "string", "description": "The file's content."},
            "encoding": {
                "type": "string",
                "enum": ["text", "base64"],
                "default": "text",
                "description": "'text' (stored as UTF-8) or 'base64' (decoded to bytes).",
            },
            "media_type": {
                "type": "string",
                "maxLength": 255,
                "description": "The MIME type, e.g. text/markdown; guessed from the name if absent.",
            },
        },
        "required": ["name", "content"],
        "additionalProperties": False,
    }

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        store, run_id = _store(context)
        content = str(arguments["content"])
        if arguments.get("encoding", "text") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                return ToolResult(content="'content' is not valid base64", is_error=True)
        else:
            data = content.encode("utf-8")
        record = await store.write(
            run_id,
            str(arguments["name"]),
            data,
            step_key=context.step_key,
            media_type=arguments.get("media_type"),
        )
        return ToolResult(content=artifact_ref(record))


class ArtifactReadTool:
    """``artifact_read``: the content of one of the run's artifacts."""

    name = "artifact_read"
    description = (
        "Read an artifact of this run by name (one an earlier step or tool call saved). Text "
        f"comes back as is, other files base64-encoded; at most {READ_LIMIT} bytes."
    )
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {"name": _NAME},
        "required": ["name"],
        "additionalProperties": False,
    }

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        store, run_id = _store(context)
        record, data = await store.read(run_id, str(arguments["name"]), limit=READ_LIMIT)
        result: dict[str, Any] = {
            **artifact_ref(record),
            "truncated": record.size > len(data),
        }
        try:
            result["content"] = data.decode("utf-8")
            result["encoding"] = "text"
        except UnicodeDecodeError:
            result["content"] = base64.b64encode(data).decode("ascii")
            result["encoding"] = "base64"
        return ToolResult(content=result, size=len(data))


class ArtifactListTool:
    """``artifact_list``: the run's artifacts."""

    name = "artifact_list"
    description = "List this run's artifacts: name, size, media type and which step wrote each."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        store, run_id = _store(context)
        return ToolResult(content=[artifact_ref(record) for record in await store.list(run_id)])

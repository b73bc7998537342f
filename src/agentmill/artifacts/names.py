"""What an artifact may be called and what media type it may declare: pure checks, no I/O.

A name is a relative path of one or more segments (``report.md``, ``charts/q1.png``). It is
used as a path under the run's directory and in URLs, so it is checked before anything
touches the disk: no absolute paths, no ``.`` or ``..`` segments, no backslashes, no control
characters, no hidden (dot) files, bounded length and depth.
"""

from __future__ import annotations

import mimetypes
import re

from agentmill.errors import InvalidArtifact

MAX_NAME = 255
MAX_DEPTH = 8
DEFAULT_MEDIA_TYPE = "application/octet-stream"

# Letters (any script), digits, space and a few punctuation marks; a segment starts with a
# letter, digit or underscore (so never "." or ".." or a hidden file) and does not end in space.
_SEGMENT = re.compile(r"[\w][\w .,+=@()\[\]-]*(?<! )")
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def check_name(name: str) -> str:
    """``name`` if it is a safe relative artifact name, else InvalidArtifact saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidArtifact("artifact name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidArtifact(f"artifact name is longer than {MAX_NAME} characters")
    if name.startswith("/") or "\\" in name:
        raise InvalidArtifact(f"artifact name {name!r} must be a relative path with '/' separators")
    segments = name.split("/")
    if len(segments) > MAX_DEPTH:
        raise InvalidArtifact(f"artifact name {name!r} has more than {MAX_DEPTH} parts")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidArtifact(
                f"artifact name {name!r} may not contain empty, '.' or '..' parts"
            )
        if not _SEGMENT.fullmatch(segment):
            raise InvalidArtifact(
                f"artifact name {name!r}: part {segment!r} must start with a letter, digit or "
                "'_' and use only letters, digits, spaces and ._-+=@,()[]"
            )
    return name


def media_type_for(name: str, declared: str | None) -> str:
    """The declared media type (checked: it goes into a response header), else one guessed
    from the name's extension, else ``application/octet-stream``."""
    if declared:
        value = declared.strip().lower()
        if len(value) > 255 or not _MEDIA_TYPE.fullmatch(value):
            raise InvalidArtifact(f"media_type {declared!r} is not a type/subtype like text/csv")
        return value
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or DEFAULT_MEDIA_TYPE

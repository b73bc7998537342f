"""Artifact names and media types: pure checks that run before anything touches the disk."""

from __future__ import annotations

import re

import pytest

from agentmill.artifacts import check_name, media_type_for
from agentmill.errors import ConfigError, InvalidArtifact


@pytest.mark.parametrize(
    "name", ["report.md", "charts/q1.png", "My Report (final).pdf", "données/été.csv", "_x", "a..b"]
)
def test_safe_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "artifact name must be a non-empty string"),
        ("../x", "artifact name '../x' may not contain empty, '.' or '..' parts"),
        ("a/../../b", "artifact name 'a/../../b' may not contain empty, '.' or '..' parts"),
        ("./a", "artifact name './a' may not contain empty, '.' or '..' parts"),
        ("a/", "artifact name 'a/' may not contain empty, '.' or '..' parts"),
        ("/etc/passwd", "artifact name '/etc/passwd' must be a relative path with '/' separators"),
        ("..\\x", "artifact name '..\\\\x' must be a relative path with '/' separators"),
        ("x" * 256, "artifact name is longer than 255 characters"),
        ("/".join("a" * 9), "artifact name 'a/a/a/a/a/a/a/a/a' has more than 8 parts"),
        ("a\x00b", "part 'a\\x00b' must start with a letter, digit or '_'"),
        ("a\nb", "part 'a\\nb' must start with a letter, digit or '_'"),
        ("trailing ", "part 'trailing ' must start with a letter, digit or '_'"),
        ("-rf", "part '-rf' must start with a letter, digit or '_'"),
    ],
)
def test_unsafe_names_are_refused_with_the_reason(name: str, message: str) -> None:
    with pytest.raises(InvalidArtifact, match=re.escape(message)):
        check_name(name)


def test_media_types_are_checked_or_guessed() -> None:
    assert issubclass(InvalidArtifact, ConfigError)  # a use error: 400 over HTTP
    assert media_type_for("a.csv", None) == "text/csv"
    assert media_type_for("a.unknown-ext", None) == "application/octet-stream"
    assert media_type_for("a", "Text/Markdown") == "text/markdown"
    for bad in ("text", "text/html\r\nSet-Cookie: x=1", "text/html; charset=utf-8", "a b/c"):
        with pytest.raises(InvalidArtifact, match="is not a type/subtype like text/csv"):
            media_type_for("a", bad)

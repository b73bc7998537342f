"""AGENTMILL_SECRET_KEY: which values are strong enough, and the key an embedded server makes
for itself on its first start when none is configured.

There is no built-in key: a key known to everyone signs tokens anyone can forge (and a reverse
proxy on the same host makes a loopback server public). ``agentmill up`` without a configured
key generates one, kept in ``<home>/secret_key`` (mode 0600) and reused on every later start;
distributed processes (``agentmill api`` and ``worker``) must share one, so they need it set.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from agentmill.errors import ConfigError

if TYPE_CHECKING:
    from agentmill.config import Settings

# The key that earlier releases used when none was set; refused, like every published example.
LEGACY_DEFAULT_SECRET = "agentmill-insecure-development-secret"
MIN_LENGTH = 32
SECRET_FILE = "secret_key"
GENERATE_HINT = (
    'generate one with `python -c "import secrets; print(secrets.token_urlsafe(32))"` '
    "(or `openssl rand -hex 32`)"
)
# Placeholder words: a value that is one of them, or contains a "change me", was copied from
# an example and never filled in.
_PLACEHOLDERS = {"secret", "secretkey", "example", "changeme", "password", "test", "default"}
_MIN_DISTINCT = 10
_MIN_BITS = 96.0  # estimated from the character frequencies; random keys have far more


def _estimated_bits(value: str) -> float:
    counts = Counter(value)
    n = len(value)
    per_char = -sum(c / n * math.log2(c / n) for c in counts.values())
    return per_char * n


def weakness(value: str) -> str | None:
    """Why ``value`` is not fit to be the secret key, or None when it is."""
    folded = "".join(ch for ch in value.lower() if ch.isalnum())
    if value == LEGACY_DEFAULT_SECRET:
        return "it is the development key of earlier releases, which everyone knows"
    if "changeme" in folded or folded in _PLACEHOLDERS:
        return "it is a placeholder from an example"
    if len(value) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    if len(set(value)) < _MIN_DISTINCT or _estimated_bits(value) < _MIN_BITS:
        return "it is too predictable (too few different characters)"
    return None


def check_secret_key(value: str) -> str:
    """``value`` if it is strong enough; ConfigError naming the setting otherwise."""
    reason = weakness(value)
    if reason is not None:
        raise ConfigError(
            f"AGENTMILL_SECRET_KEY is refused: {reason}. Set it to a long random value: "
            + GENERATE_HINT
        )
    return value


def missing_secret_key(why: str) -> ConfigError:
    return ConfigError(f"AGENTMILL_SECRET_KEY is not set: {why}; {GENERATE_HINT}")


def local_secret_key(home: Path) -> str:
    """The key in ``<home>/secret_key``, generated (mode 0600) when the file does not exist.

    The file appears whole or not at all (written aside, then linked into place), and when two
    processes start at once the first link wins and both use its key."""
    path = home / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh = secrets.token_urlsafe(32)
    aside = home / f".{SECRET_FILE}.{secrets.token_hex(8)}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(fresh + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use its key
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    value = path.read_text().strip()
    reason = weakness(value)
    if reason is not None:
        raise ConfigError(
            f"{str(path)!r} holds a key that is refused ({reason}): delete the file to have a "
            "new one generated, or set AGENTMILL_SECRET_KEY"
        )
    return value


def with_secret(settings: Settings, *, embedded: bool) -> Settings:
    """``settings`` with a secret key: the configured one, or (embedded) the one kept in
    ``<home>/secret_key``, generated on the first start. The processes of a distributed setup
    must all use the same key, so there it must be configured."""
    if settings.secret_key is not None:
        return settings
    if not embedded:
        raise missing_secret_key("every API and worker process must be given the same one")
    return settings.model_copy(update={"secret_key": local_secret_key(settings.home)})

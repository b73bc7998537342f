"""A claimed step: everything a worker needs to execute one attempt of it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class RunCaller:
    """On whose behalf a run's model calls are made: budgets and limits are keyed on it."""

    workspace_id: str | None = None
    started_by: str | None = None  # a user id
    api_key_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Claim:
    step_id: str
    run_id: str
    root_run_id: str
    step_key: str
    spec_id: str
    kind: str
    attempt: int
    failures: int
    max_attempts: int
    parent_step_id: str | None
    map_index: int | None
    version_id: str
    spec_path: str
    run_inputs: dict[str, Any]
    upstream: dict[str, dict[str, Any]]
    item: Any = None
    deadline_at: datetime | None = None
    owner: str = ""
    caller: RunCaller = field(default_factory=RunCaller)


class StaleClaim(Exception):
    """The step moved on without us (cancelled, reclaimed after a lost lease): drop the result."""


def worker_identity(name: str | None = None) -> str:
    """``host:pid:name`` — the lease owner. Host and pid let a restart on the same machine tell a
    dead owner from a live one without waiting for its leases to expire."""
    suffix = name or os.urandom(3).hex()
    return f"{socket.gethostname()}:{os.getpid()}:{suffix}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` ran on this host and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False

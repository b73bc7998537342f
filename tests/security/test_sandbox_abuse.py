"""Abuse of the ``python`` tool's sandbox: tracing other processes, holding more memory than a
call may by spreading it over processes, and running more calls at once than a worker allows.

Like tests/tools/test_sandbox.py these run real code in real bubblewrap."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentmill.tools.base import ToolContext, ToolResult
from agentmill.tools.sandbox import PythonTool, SandboxLimits, SandboxState
from agentmill.tools.sandbox._cgroup import find_parent
from agentmill.tools.sandbox._memory import descendants, watch_memory
from agentmill.tools.sandbox._process import run_capped
from agentmill.tools.sandbox._uids import DEFAULT_UID_BASE

CONTEXT = ToolContext(workspace_id="ws", run_id="run", step_key="step")
UID_COUNT = 8
# A uid range of its own (see tests/tools/test_sandbox.py), apart from the other files' ranges.
UID_BASE = DEFAULT_UID_BASE + 500_000 + (os.getpid() % 10_000) * UID_COUNT


@pytest.fixture(scope="module")
def lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("uid-locks") / "locks"


async def make_tool(lock_dir: Any, **options: Any) -> PythonTool:
    tool = PythonTool(uid_base=UID_BASE, uid_count=UID_COUNT, uid_lock_dir=lock_dir, **options)
    status = await tool.sandbox_status()
    assert status.state is SandboxState.AVAILABLE, status.reason
    return tool


async def run(tool: PythonTool, code: str) -> ToolResult:
    return await tool.run({"code": textwrap.dedent(code)}, CONTEXT)


# -- tracing --------------------------------------------------------------------------------

TRACING = """
import ctypes, errno, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long

def outcome(result):
    return "succeeded" if result != -1 else errno.errorcode[ctypes.get_errno()]

sibling = os.fork()
if sibling == 0:
    time.sleep(60)
    os._exit(0)
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_SEIZE = 0, 16, 0x4206
print("traceme", outcome(libc.ptrace(PTRACE_TRACEME, 0, None, None)))
print("attach", outcome(libc.ptrace(PTRACE_ATTACH, sibling, None, None)))
print("seize", outcome(libc.ptrace(PTRACE_SEIZE, sibling, None, None)))

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buffer = ctypes.create_string_buffer(16)
local = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 16)
remote = IoVec(ctypes.cast(buffer, ctypes.c_void_p), 16)
for name in ("process_vm_readv", "process_vm_writev"):
    call = getattr(libc, name)
    call.restype = ctypes.c_ssize_t
    result = call(sibling, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    print(name, outcome(result))
os.kill(sibling, signal.SIGKILL)
os.waitpid(sibling, 0)
"""


async def test_ptrace_and_reading_another_process_memory_are_refused(lock_dir: Any) -> None:
    tool = await make_tool(lock_dir)

    result = await run(tool, TRACING)

    assert result.content["stdout"] == (
        "traceme EPERM\nattach EPERM\nseize EPERM\n"
        "process_vm_readv EPERM\nprocess_vm_writev EPERM\n"
    ), result.content
    assert result.content["exit_code"] == 0


# -- memory across processes ----------------------------------------------------------------

# Each child allocates (and touches) 400 MB, under the per-process address-space limit; four
# of them are 1.6 GB, over the call's 512 MiB.
FOUR_CHILDREN = """
import os, sys, time
children = []
for n in range(4):
    pid = os.fork()
    if pid == 0:
        data = b"x" * (400 << 20)
        print("child", n, "holds", len(data) >> 20, "MB", flush=True)
        time.sleep(10)
        os._exit(0)
    children.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in children]
print("all held", statuses)
"""
MEMORY_LIMITS = SandboxLimits(timeout_seconds=30, memory_bytes=512 << 20, max_processes=16)


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup-if-any", "watch-only"])
async def test_children_cannot_hold_more_than_the_calls_memory_in_total(
    lock_dir: Any, cgroups: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="agentmill.tools.sandbox.tool"):
        tool = await make_tool(lock_dir, limits=MEMORY_LIMITS, cgroups=cgroups)
    status = tool.status
    assert status is not None
    assert status.containment is not None
    watch = "a watch summing the call's processes' memory every 50 ms ("
    if cgroups:  # whichever this machine has: a cgroup, or the watch and why
        assert status.containment.startswith(("cgroup v2 below", "cgroup v1:", watch))
    else:
        assert status.containment == watch + "cgroups not tried)"

    result = await run(tool, FOUR_CHILDREN)

    assert result.is_error is True
    assert result.content["killed_by"] == "memory_limit", result.content
    assert result.content["timed_out"] is False
    assert result.content["error"].startswith(
        "killed: the sandbox call exceeded its 512 MiB memory limit"
    )
    assert "all held" not in result.content["stdout"]
    # 512 MiB has room for one 400 MB child at most
    assert result.content["stdout"].count(" holds ") <= (1 if cgroups else 2)
    # the log says which containment is in force
    assert [r.getMessage() for r in caplog.records if "as a whole" in r.getMessage()] == [
        "python tool: available; each call's memory capped at 512 MiB as a whole by "
        f"{status.containment}; at most 4 calls at once (2 GiB in all)"
    ]
    # and nothing is left of the call's cgroup
    parent, _ = find_parent()
    if cgroups and parent is not None:
        dirs = [parent.memory_dir, *([parent.pids_dir] if parent.pids_dir else [])]
        assert [p for d in dirs for p in d.glob(f"agentmill-sandbox-{os.getpid()}-*")] == []


async def test_the_watch_without_a_leased_uid_sums_the_commands_process_tree() -> None:
    # What a server that is not root gets without a cgroup: the processes below the command.
    code = FOUR_CHILDREN.replace("400 << 20", "100 << 20")
    stdin = os.open("/dev/null", os.O_RDONLY)
    try:
        outcome = await run_capped(
            [sys.executable, "-c", code],
            stdin=stdin,
            env={"PATH": "/usr/bin:/bin"},
            wall_seconds=30,
            output_bytes=4096,
            watch=lambda pid: watch_memory(lambda: descendants(pid), 200 << 20),
        )
    finally:
        os.close(stdin)

    assert outcome.over_memory is True
    assert outcome.timed_out is False
    assert b"all held" not in outcome.stdout


async def test_one_process_over_its_address_space_still_gets_memory_error(lock_dir: Any) -> None:
    tool = await make_tool(lock_dir, limits=MEMORY_LIMITS)

    result = await run(tool, "data = bytearray(1 << 30)")

    assert result.content["killed_by"] is None
    assert result.content["stderr"].rstrip().endswith("MemoryError")


# -- calls at once --------------------------------------------------------------------------

# Each call records when it ran, by the shared wall clock, and holds its slot for a while.
TIMED = """
import time
start = time.time()
time.sleep(1.5)
print(start, time.time())
"""


async def test_at_most_max_calls_run_at_once_the_rest_wait(
    lock_dir: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tool = await make_tool(lock_dir, max_calls=2)

    with caplog.at_level(logging.INFO, logger="agentmill.tools.sandbox.tool"):
        results = await asyncio.gather(*(run(tool, TIMED) for _ in range(3)))

    spans = sorted(tuple(map(float, r.content["stdout"].split())) for r in results)
    assert len(spans) == 3
    # at no call's start were two others still running
    for start, _ in spans:
        running = [s for s, e in spans if s <= start < e]
        assert len(running) <= 2, spans
    # the third started only after one of the first two had finished
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    waits = [r.getMessage() for r in caplog.records if "this call waits" in r.getMessage()]
    assert waits == [
        "python tool: 2 calls already running, the most one worker runs at once "
        "(AGENTMILL_SANDBOX_MAX_CALLS); this call waits"
    ]


def test_max_calls_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_calls must be at least 1, not 0"):
        PythonTool(max_calls=0)


async def test_an_unusable_configured_cgroup_falls_back_to_the_watch_and_says_why(
    lock_dir: Any, tmp_path: Path
) -> None:
    configured = tmp_path / "not-a-cgroup"
    configured.mkdir()
    tool = await make_tool(lock_dir, limits=MEMORY_LIMITS, cgroup_parent=configured)

    assert tool.status is not None
    assert tool.status.containment == (
        "a watch summing the call's processes' memory every 50 ms (no cgroup: cgroup v2 "
        f"{str(configured)!r}: cannot read {str(configured)!r}: No such file or directory)"
    )
    result = await run(tool, FOUR_CHILDREN)
    assert result.content["killed_by"] == "memory_limit"

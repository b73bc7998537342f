"""What a run's outcome looks like to the model."""

from __future__ import annotations

import signal
from typing import Any

from agentmill.tools.base import ToolResult
from agentmill.tools.sandbox._command import SandboxLimits
from agentmill.tools.sandbox._process import Outcome

_STDERR_TAIL = 2_000


def tool_result(outcome: Outcome, limits: SandboxLimits, *, sandboxed: bool) -> ToolResult:
    """``{exit_code, stdout, stderr, timed_out, truncated, killed_by}``, plus ``error`` (what
    happened and stderr's tail) when the run failed.

    ``exit_code`` is negative for a death by signal (bwrap reports one as 128 + N, which we map
    back, so a program that exits with status 129-192 on purpose reads as a signal).
    ``killed_by`` is ``"timeout"``, ``"output_limit"``, ``"memory_limit"`` (the call as a whole;
    one process over its address space gets ``MemoryError``), ``"cpu_limit"``, another signal's name
    (``"SIGKILL"``, ``"SIGSEGV"``) or None.
    """
    code = outcome.returncode
    signum: int | None = None
    if code < 0:
        signum = -code
    elif sandboxed and 128 < code <= 128 + signal.SIGRTMAX:
        # bwrap reports a child killed by signal N as exit status 128 + N
        signum = code - 128
    killed_by: str | None = None
    if outcome.timed_out:
        killed_by = "timeout"
    elif outcome.truncated:
        killed_by = "output_limit"
    elif outcome.over_memory:
        killed_by = "memory_limit"
    elif signum == signal.SIGXCPU:
        killed_by = "cpu_limit"
    elif signum is not None:
        killed_by = _signal_name(signum)
    exit_code = -signum if signum is not None else code
    stdout = outcome.stdout.decode("utf-8", "replace")
    stderr = outcome.stderr.decode("utf-8", "replace")
    content: dict[str, Any] = {
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "timed_out": outcome.timed_out,
        "truncated": outcome.truncated,
        "killed_by": killed_by,
    }
    is_error = exit_code != 0 or killed_by is not None
    if is_error:
        content["error"] = _error_message(exit_code, killed_by, stderr, limits)
    return ToolResult(
        content=content, is_error=is_error, size=len(outcome.stdout) + len(outcome.stderr)
    )


def _error_message(
    exit_code: int, killed_by: str | None, stderr: str, limits: SandboxLimits
) -> str:
    if killed_by == "timeout":
        head = f"killed: still running after {limits.timeout_seconds:g} s (wall clock)"
    elif killed_by == "output_limit":
        head = f"killed: more than {limits.output_bytes} bytes of output on one stream"
    elif killed_by == "memory_limit":
        head = f"killed: the sandbox call exceeded its {size(limits.memory_bytes)} memory limit"
    elif killed_by == "cpu_limit":
        head = f"killed: used {limits.cpu_seconds} s of CPU"
    elif killed_by is not None:
        head = f"killed by {killed_by}"
    else:
        head = f"exited with status {exit_code}"
    tail = stderr[-_STDERR_TAIL:].strip()
    return f"{head}\n{tail}" if tail else head


def size(n: int) -> str:
    """``1 GiB``, ``512 MiB``, ``64 KiB`` when exact, else bytes."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"

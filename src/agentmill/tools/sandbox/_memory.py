"""Without a cgroup: watch a call's memory as a whole by summing its processes' PSS.

RLIMIT_AS still caps each process; this catches a call that spreads its memory over many. PSS
(proportional set size) counts a page shared by k processes as 1/k in each, so pages a fork
shares copy-on-write with its parent are not counted twice. The check runs every
``INTERVAL`` seconds, so a call can briefly hold more than its limit (what it can allocate in
that time) before it is killed; a cgroup has no such window.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

INTERVAL = 0.05


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a process that left the tree is not found)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return found


def memory_of(pids: list[int]) -> int:
    """Bytes the processes hold between them (PSS; resident minus shared where unreadable)."""
    total = 0
    for pid in pids:
        total += _pss(pid)
    return total


async def watch_memory(pids: Callable[[], list[int]], limit: int) -> None:
    """Return once the processes ``pids()`` lists hold more than ``limit`` bytes."""
    while True:
        # the scan reads /proc, which is quick but blocking: off the event loop
        held = await asyncio.to_thread(lambda: memory_of(pids()))
        if held > limit:
            return
        await asyncio.sleep(INTERVAL)


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    # smaps_rollup needs ptrace access; statm is world-readable
    try:
        with open(f"/proc/{pid}/statm") as f:
            fields = f.read().split()
        return max(0, int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

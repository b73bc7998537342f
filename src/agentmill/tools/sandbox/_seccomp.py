"""A classic-BPF seccomp program that forbids creating user namespaces and tracing other
processes, built with ``struct``.

bwrap's ``--seccomp FD`` loads a compiled program (an array of ``struct sock_filter``) as the
sandboxed process's filter. We assemble the few instructions by hand rather than depend on
libseccomp: the program is short enough to read in full.

    if arch != native:                        kill the process (no 32-bit/foreign entry points)
    if nr has the x32 bit (x86_64):           kill the process
    if nr == clone3:                          ENOSYS (its flags live in memory the filter cannot
                                              read; libc then falls back to clone, checked below)
    if nr in (ptrace, process_vm_readv,
              process_vm_writev, kcmp,
              pidfd_getfd):                   EPERM
    if nr in (unshare, clone)
       and args[0] & CLONE_NEWUSER:           EPERM
    otherwise:                                allow

Blocking new user namespaces removes the kernel's largest unprivileged attack surface from inside
the sandbox (a new user namespace grants capabilities over fresh mount, net, ... namespaces).
The tracing calls would let one process of a call read or rewrite another's memory and files
(the code has no business debugging), and ptrace is a classic source of kernel bugs.
"""

from __future__ import annotations

import errno
import platform
import struct
import sys
from dataclasses import dataclass

# <linux/filter.h> / <linux/bpf_common.h>
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_JMP_JGE_K = 0x05 | 0x30 | 0x00
_BPF_JMP_JSET_K = 0x05 | 0x40 | 0x00
_BPF_RET_K = 0x06 | 0x00

# <linux/seccomp.h>
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LOW = 16  # little-endian: the low 32 bits of args[0] come first

CLONE_NEWUSER = 0x10000000
_X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True, kw_only=True)
class _Arch:
    audit_arch: int
    unshare: int
    clone: int
    clone3: int
    x32_bit: bool
    tracing: tuple[int, ...]
    """ptrace, process_vm_readv, process_vm_writev, kcmp, pidfd_getfd."""


# Syscall numbers from each architecture's unistd table.
_ARCHES = {
    "x86_64": _Arch(
        audit_arch=0xC000003E,
        unshare=272,
        clone=56,
        clone3=435,
        x32_bit=True,
        tracing=(101, 310, 311, 312, 438),
    ),
    "aarch64": _Arch(
        audit_arch=0xC00000B7,
        unshare=97,
        clone=220,
        clone3=435,
        x32_bit=False,
        tracing=(117, 270, 271, 272, 438),
    ),
}


class SeccompUnsupported(Exception):
    """No filter is defined for this machine's architecture."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_new_userns_filter(machine: str | None = None) -> bytes:
    """The compiled filter for ``machine`` (default: this one), ready for ``bwrap --seccomp``."""
    machine = machine or platform.machine()
    arch = _ARCHES.get(machine)
    if arch is None or sys.byteorder != "little":
        raise SeccompUnsupported(f"no seccomp filter for machine {machine!r}")
    # Jump offsets are relative to the next instruction; the tail is fixed, so count backwards.
    # Layout of the tail:  [allow] [check: ld arg0; jset NEWUSER] [eperm] [allow] [enosys]
    # [kill]
    body: list[bytes | tuple[str, int]] = [
        _insn(_BPF_LD_W_ABS, _OFF_ARCH),
        ("jne_kill", arch.audit_arch),
        _insn(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if arch.x32_bit:
        body.append(("jge_kill", _X32_SYSCALL_BIT))
    body.append(("jeq_enosys", arch.clone3))
    body += [("jeq_eperm", nr) for nr in arch.tracing]
    body += [
        ("jeq_check", arch.unshare),
        ("jeq_check", arch.clone),
    ]
    tail = [
        _insn(_BPF_RET_K, _RET_ALLOW),  # allow
        _insn(_BPF_LD_W_ABS, _OFF_ARG0_LOW),  # check: flags
        _insn(_BPF_JMP_JSET_K, CLONE_NEWUSER, jt=0, jf=1),
        _insn(_BPF_RET_K, _RET_ERRNO | errno.EPERM),  # eperm
        _insn(_BPF_RET_K, _RET_ALLOW),
        _insn(_BPF_RET_K, _RET_ERRNO | errno.ENOSYS),  # enosys
        _insn(_BPF_RET_K, _RET_KILL_PROCESS),  # kill
    ]
    labels = {"check": 1, "eperm": 3, "enosys": 5, "kill": 6}  # indices within the tail
    program: list[bytes] = []
    for i, item in enumerate(body):
        if isinstance(item, bytes):
            program.append(item)
            continue
        op, k = item
        # distance from the instruction after this one to the tail's label
        to_tail = len(body) - i - 1
        if op == "jne_kill":
            program.append(_insn(_BPF_JMP_JEQ_K, k, jt=0, jf=to_tail + labels["kill"]))
        elif op == "jge_kill":
            program.append(_insn(_BPF_JMP_JGE_K, k, jt=to_tail + labels["kill"], jf=0))
        elif op == "jeq_enosys":
            program.append(_insn(_BPF_JMP_JEQ_K, k, jt=to_tail + labels["enosys"], jf=0))
        elif op == "jeq_eperm":
            program.append(_insn(_BPF_JMP_JEQ_K, k, jt=to_tail + labels["eperm"], jf=0))
        else:
            program.append(_insn(_BPF_JMP_JEQ_K, k, jt=to_tail + labels["check"], jf=0))
    program += tail
    return b"".join(program)

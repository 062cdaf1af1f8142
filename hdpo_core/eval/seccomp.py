"""A tiny seccomp filter for the code sandbox: no RAM that no size cap counts.

Inside the sandbox every file system the program can write is a size-capped tmpfs and its address space is
capped (:class:`hdpo_core.eval.bwrap.MemoryBudget`). Two kernel objects escape both: an anonymous memory file
(``memfd_create``: each may grow to ``RLIMIT_FSIZE``, so 256 descriptors held 4 GiB, measured 640 MiB with 40
of them in a 256 MiB budget) and a System V shared memory segment (``shmget``: filled while attached, it stays
after ``shmdt``, outside ``RLIMIT_AS``). The filter makes those calls (and ``memfd_secret``) fail with
``EPERM``; everything else is allowed. No test program of HumanEval's kind uses them.

bubblewrap installs it (``--seccomp FD``, the compiled classic-BPF program read from a descriptor); it is built
here by hand, nine instructions, so no libseccomp is needed. Syscalls of another ABI than the host's
(x32, or i386 on x86-64) are refused too, since the numbers below would not match them. On an architecture
not listed, :func:`program` returns None and the sandbox runs without the filter (``describe`` says so).
"""

from __future__ import annotations

import errno
import platform
import struct

# (audit arch, {name: number}) per machine; numbers from the kernel's syscall tables
_ARCH = {
    "x86_64": (0xC000003E, {"shmget": 29, "memfd_create": 319, "memfd_secret": 447}),
    "aarch64": (0xC00000B7, {"shmget": 194, "memfd_create": 279, "memfd_secret": 447}),
}
_X32_BIT = 0x40000000  # x86-64's x32 ABI numbers carry this bit
DENIED = ("shmget", "memfd_create", "memfd_secret")

_LD_ABS_W, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter, native byte order


def program(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this host), as bwrap reads it; None where it is not known."""
    arch = _ARCH.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, numbers = arch
    nrs = [numbers[name] for name in DENIED]
    deny_at = 5 + len(nrs)  # index of the "return EPERM" instruction (after the allow)
    out = [_insn(_LD_ABS_W, 4),  # seccomp_data.arch
           _insn(_JEQ_K, audit_arch, 0, deny_at - 2),
           _insn(_LD_ABS_W, 0)]  # seccomp_data.nr
    out.append(_insn(_JGE_K, _X32_BIT, deny_at - 4, 0))
    for i, nr in enumerate(nrs):
        out.append(_insn(_JEQ_K, nr, deny_at - 5 - i, 0))
    out.append(_insn(_RET_K, _ALLOW))
    out.append(_insn(_RET_K, _ERRNO | errno.EPERM))
    return b"".join(out)

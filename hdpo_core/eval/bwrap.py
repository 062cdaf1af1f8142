"""The OS-level sandbox of the ``code`` verifier: bubblewrap (``bwrap``), probed once per process.

What the command built here gives the program (each point is tried by an attack in
``tests/eval/test_sandbox_attacks.py``):

* **its own user**: the sandbox runs as uid/gid 65534 ("nobody") inside a new user namespace with no
  capabilities, and no further user namespaces (``--disable-userns``). When the evaluator is root, bwrap itself
  is started as uid 65534 (``Popen(user=...)``), so the program is not root outside either: ``RLIMIT_NPROC``
  then holds (the kernel exempts only uid 0), and it is counted per user namespace, i.e. per sandbox.
* **new pid, mount, network, ipc, uts and cgroup namespaces** (``--unshare-all``): the program sees only its own
  processes, has a loopback that reaches nothing (no 127.0.0.1 of the host), and no host hostname.
* **a read-only system and nothing else**: ``/usr``, ``/etc`` and the ``/bin``, ``/lib*`` links, the Python
  installation when it lives elsewhere, a fresh ``/dev`` and ``/proc``; the program file is a read-only copy.
  Home folders, ``/work``, ``/root``, ``/var``, the host's ``/tmp`` and the run folder are not there at all.
* **two writable places, both size-capped RAM file systems** (:class:`MemoryBudget`): ``/tmp`` (also ``HOME``
  and the working folder) and ``/dev/shm`` (POSIX shared memory). bwrap builds the root and ``/dev`` as
  tmpfs file systems owned by the sandbox user and *without a size* (half the host's RAM: a program wrote
  1.2 GB to ``/dev/shm`` in 3 s), so both are remounted read-only (``--remount-ro``) once everything is
  mounted; ``/dev``'s device nodes stay usable (they are bind mounts of their own). ``/dev/mqueue`` is not
  mounted, and POSIX message queues get no memory (``RLIMIT_MSGQUEUE`` 0, set by the sandbox's prelude).
* **no memory that no cap counts**: a seccomp filter (:mod:`hdpo_core.eval.seccomp`, ``--seccomp``) makes
  ``memfd_create`` and System V ``shmget`` fail with ``EPERM``.
* **no environment** (``--clearenv``): ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``, ``PYTHONHASHSEED`` only.
* **lifetime**: ``--die-with-parent`` and ``--new-session``; bwrap's own pid 1 reaps the program, and when it
  dies (program exit, or bwrap killed at the timeout) the kernel kills every process of the pid namespace,
  including one that called ``setsid``.

Containers: a rootful podman/docker container may forbid mounting a new ``/proc`` ("Can't mount proc"); the
probe then retries without ``--proc`` (still a new pid namespace; ``/proc`` is simply absent). User namespaces
must be allowed (podman: default; docker: ``--security-opt seccomp=unconfined`` or a profile allowing
``clone``/``unshare`` of user namespaces, and ``--security-opt apparmor=unconfined`` on AppArmor hosts);
``--security-opt systempaths=unconfined`` restores ``--proc``. See docs/eval.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict

from . import seccomp

BWRAP_ENV = "HDPO_BWRAP"  # name or path of the bubblewrap binary (default "bwrap"); a missing one = no sandbox
SANDBOX_UID = 65534
PROGRAM = "/sandbox/program.py"
TMP_BYTES = 64 << 20  # largest private /tmp
SHM_BYTES = 16 << 20  # largest private /dev/shm
_SYSTEM = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Isolation:
    """A bwrap setup that started a program on this host: binary, interpreter, and whether ``--proc`` works."""

    bwrap: str
    python: str
    proc: bool
    drop_to: int | None  # uid to become before starting bwrap (the evaluator is root), else None

    def describe(self) -> str:
        return "bubblewrap" + ("" if self.proc else " (no /proc: this host forbids mounting it)")


@dataclass(frozen=True)
class MemoryBudget:
    """One sample's memory budget (``eval.memory_mb``) split between what the program can fill.

    ``tmp_bytes + shm_bytes + address_space == total``: the two RAM file systems are capped by their
    ``--size`` (a write past it fails with ``ENOSPC``; files in them are not counted by ``RLIMIT_AS``, so
    they are taken off it), and the rest is the address-space limit of the program (``RLIMIT_AS``).
    ``/tmp`` gets an eighth of the budget (at most 64 MiB), ``/dev/shm`` a 32nd (at most 16 MiB): the
    default 512 MiB leaves 432 MiB of address space. Like ``RLIMIT_AS`` itself, the address space is per
    process (up to 16 of them, ``RLIMIT_NPROC``); only a cgroup could bound their sum.
    """

    total: int
    tmp_bytes: int
    shm_bytes: int

    @classmethod
    def of(cls, memory_mb: int) -> MemoryBudget:
        total = int(memory_mb) << 20
        return cls(total, min(TMP_BYTES, total // 8), min(SHM_BYTES, total // 32))

    @property
    def address_space(self) -> int:
        return self.total - self.tmp_bytes - self.shm_bytes


def command(iso: Isolation, program_fd: int, budget: MemoryBudget | None = None,
            seccomp_fd: int | None = None) -> list[str]:
    """The bwrap command line running the program read from ``program_fd`` (an inherited file descriptor);
    the writable file systems are sized from ``budget`` (default: the 512 MiB of ``eval.memory_mb``), and the
    seccomp filter (:mod:`hdpo_core.eval.seccomp`) is read from ``seccomp_fd``. See :func:`prepared`."""
    budget = budget or MemoryBudget.of(512)
    cmd = [iso.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
           "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox", "--clearenv"]
    for key, value in (("PATH", "/usr/local/bin:/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"),
                       ("LANG", "C.UTF-8"), ("PYTHONHASHSEED", "0")):
        cmd += ["--setenv", key, value]
    for path in _SYSTEM:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    prefix = _prefix_of(iso.python)
    if prefix is not None:
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--size", str(budget.tmp_bytes), "--tmpfs", "/tmp", "--dev", "/dev",
            "--size", str(budget.shm_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if iso.proc:
        cmd += ["--proc", "/proc"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    cmd += ["--ro-bind-data", str(program_fd), PROGRAM, "--remount-ro", "/", "--chdir", "/tmp", "--", iso.python,
            "-I", "-B", PROGRAM]
    return cmd


@contextlib.contextmanager
def prepared(iso: Isolation, source: bytes,
             budget: MemoryBudget | None = None) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """``(command, descriptors to pass)`` running ``source``: the program and the seccomp filter are handed
    to bwrap as unlinked temporary files (nothing of the sandbox's lies on the host's file system)."""
    with tempfile.TemporaryFile() as prog, tempfile.TemporaryFile() as filt:
        prog.write(source)
        prog.flush()
        prog.seek(0)
        bpf = seccomp.program()
        if bpf is not None:
            filt.write(bpf)
            filt.flush()
            filt.seek(0)
        seccomp_fd = filt.fileno() if bpf is not None else None
        fds = (prog.fileno(),) + ((filt.fileno(),) if bpf is not None else ())
        yield command(iso, prog.fileno(), budget, seccomp_fd), fds


class PopenUser(TypedDict, total=False):
    """The ``subprocess.Popen`` keyword arguments that change who the child runs as."""

    user: int
    group: int
    extra_groups: list[int]


def popen_user(iso: Isolation) -> PopenUser:
    """``subprocess.Popen`` keyword arguments that start bwrap as the unprivileged uid when we are root."""
    if iso.drop_to is None:
        return {}
    return {"user": iso.drop_to, "group": iso.drop_to, "extra_groups": []}


def _prefix_of(python: str) -> str | None:
    """The installation folder to bind for ``python`` when it is not under the system folders already bound."""
    if any(python.startswith(p + "/") for p in _SYSTEM):
        return None
    return os.path.dirname(os.path.dirname(python))  # PREFIX/bin/pythonX.Y -> PREFIX


def _interpreters() -> list[str]:
    """Candidates, best first: the evaluator's own (base) interpreter, then the system's."""
    found: list[str] = []
    for cand in (getattr(sys, "_base_executable", None) or sys.executable, "/usr/local/bin/python3",
                 "/usr/bin/python3"):
        real = os.path.realpath(cand)
        if os.path.isfile(real) and real not in found:
            found.append(real)
    return found


def isolation() -> tuple[Isolation | None, str]:
    """The working bwrap setup on this host (probed once per binary and user), or ``None`` and why not."""
    return _probe(os.environ.get(BWRAP_ENV) or "bwrap", os.geteuid())


@functools.cache
def _probe(name: str, euid: int) -> tuple[Isolation | None, str]:
    path = shutil.which(name)
    if path is None:
        return None, f"bubblewrap ('{name}') is not installed"
    reason = "no interpreter found"
    drop = SANDBOX_UID if euid == 0 else None
    for python in _interpreters():
        for proc in (True, False):
            iso = Isolation(path, python, proc, drop)
            ok, reason = _try(iso)
            if ok:
                return iso, ""
    return None, reason


def _try(iso: Isolation) -> tuple[bool, str]:
    """Start ``print(os.getuid())`` in the sandbox; True when it ran as the sandbox uid."""
    with prepared(iso, b"import os\nprint(os.getuid())\n") as (cmd, fds):
        try:
            done = subprocess.run(cmd, pass_fds=fds, cwd="/",
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                                  **popen_user(iso))
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"{iso.bwrap} could not start ({exc})"
    if done.returncode == 0 and done.stdout.strip() == str(SANDBOX_UID).encode():
        return True, ""
    err = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return False, f"{iso.bwrap} failed here ({err[-1][:200] if err else f'exit {done.returncode}'})"

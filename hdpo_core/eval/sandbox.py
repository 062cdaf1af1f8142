"""Run untrusted model-written Python (HumanEval-style checks) for the ``code`` verifier.

A hang, crash, memory blow-up or escape attempt must score as a failure and never stop the evaluation, and the
program must not reach anything of the evaluator's. The boundary is the operating system's: every program runs
under bubblewrap (:mod:`hdpo_core.eval.bwrap`: unprivileged uid, new pid/mount/net/ipc/uts namespaces, read-only
system, private ``/tmp`` and ``/dev/shm`` whose sizes come out of the sample's memory budget, empty environment,
the whole pid namespace killed at the timeout).
Inside it, before the program, a prelude sets resource limits that hold because the sandbox is not root:
``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (16 MiB files), ``RLIMIT_NPROC`` (16 tasks: a fork
bomb stops there), ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` and ``RLIMIT_MSGQUEUE`` (0: no POSIX message queue memory); output is read with a cap (1 MiB, then the run is
killed and fails; the last 4000 characters are kept).

The prelude also installs an audit hook refusing fork/exec/sockets/kill and writes outside the working folder.
It is a second layer only: its settings are ordinary objects the program can change, and Python's own
documentation says audit hooks are no sandbox. Where bubblewrap cannot run, :func:`run_python` refuses
(:class:`SandboxUnavailable`) unless the caller opts in to unsandboxed execution (the job field
``eval.allow_unsandboxed_code: true``), the way HumanEval's harness keeps ``exec`` commented out until a user
enables it. Unsandboxed runs keep only the hook, the rlimits (``RLIMIT_NPROC`` does not bind root), a network
namespace when ``unshare`` works, a fresh temp folder and a process-group kill at the timeout.
"""

from __future__ import annotations

import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Unpack

from hdpo_core.errors import InputError

from . import bwrap

_OUTPUT_LIMIT = 4000  # characters of output kept (the tail: where a traceback ends)
_OUTPUT_CAP = 1 << 20  # bytes of output read before the program is killed
_NPROC = 16

_PRELUDE = r'''
import os, resource, sys
_root = os.path.realpath(os.getcwd())
_mem = {mem}
for _lim, _val in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, {cpu}),
                   (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, {nproc}),
                   (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_MSGQUEUE, 0)):
    try:
        resource.setrlimit(_lim, (_val, _val))
    except (ValueError, OSError):
        pass
_WRITE_EVENTS = {{"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.symlink", "os.link",
                 "os.truncate", "os.utime", "os.chown", "shutil.rmtree", "shutil.move", "shutil.copyfile"}}
_PROC_EVENTS = {{"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                "subprocess.Popen", "os.kill", "os.killpg", "socket.__new__", "socket.connect", "pty.spawn"}}
def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return p == _root or p.startswith(_root + os.sep)
def _hook(event, args, _inside=_inside, _W=_WRITE_EVENTS, _P=_PROC_EVENTS):
    if event in _P:
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "import" and args[0] in ("_posixsubprocess", "_ctypes", "ctypes"):
        raise PermissionError("sandbox: importing " + args[0] + " is not allowed")
    if event == "open":
        path, mode = args[0], args[1]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        if writing and not isinstance(path, int) and not _inside(path):
            raise PermissionError("sandbox: writing outside the working directory is not allowed")
    elif event in _W:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                raise PermissionError("sandbox: " + event + " outside the working directory is not allowed")
sys.addaudithook(_hook)
del _hook
'''



class SandboxUnavailable(InputError):
    """No OS isolation on this host and no opt-in to unsandboxed execution."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run. ``passed`` only when the program exited 0 within the time limit."""

    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error"
    returncode: int | None
    output: str
    seconds: float


def require_sandbox(allow_unsandboxed: bool) -> str:
    """How code will run here ("bubblewrap", ...); raises :class:`SandboxUnavailable` when it would run
    unisolated without ``allow_unsandboxed``. Call it before an evaluation starts, so it fails in one line."""
    iso, why = bwrap.isolation()
    if iso is not None:
        return iso.describe()
    if allow_unsandboxed:
        return f"UNSANDBOXED ({why}; eval.allow_unsandboxed_code: true)"
    raise SandboxUnavailable(
        f"eval.verifier: code: refusing to run model-written code without a sandbox: {why}. Install bubblewrap "
        "(apt-get install -y bubblewrap; in a container see docs/eval.md), or, only for code you trust, set "
        "eval.allow_unsandboxed_code: true")


@functools.cache
def network_namespace_available() -> bool:
    """True when ``unshare --user --map-root-user --net`` can start a process here (checked once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        proc = subprocess.run([unshare, "--user", "--map-root-user", "--net", sys.executable, "-c", "pass"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def run_python(program: str, *, timeout_s: float = 5.0, memory_mb: int = 512,
               allow_unsandboxed: bool = False) -> SandboxResult:
    """Run ``program`` (Python source) in the sandbox; never raises for anything the program does.

    Args:
        program: the full program (e.g. prompt + completion + test + ``check(entry_point)``).
        timeout_s: wall-clock limit; CPU time is limited to ``int(timeout_s) + 1`` seconds.
        memory_mb: the sample's memory budget: the sizes of the sandbox's writable RAM file systems plus the
            address-space limit of each process (``RLIMIT_AS``); see :class:`bwrap.MemoryBudget`.
        allow_unsandboxed: run without OS isolation when bubblewrap is unavailable (else
            :class:`SandboxUnavailable` is raised).
    """
    iso, _ = bwrap.isolation()
    budget = bwrap.MemoryBudget.of(memory_mb)
    # unsandboxed, RLIMIT_NPROC counts every process of the evaluator's user: 0 (no new process) is the only
    # safe value there; in the sandbox it counts the sandbox's own tasks
    prelude = _PRELUDE.format(mem=budget.address_space if iso else budget.total, cpu=int(timeout_s) + 1,
                              nproc=_NPROC if iso else 0)
    source = prelude + "\n" + program + "\n"
    if iso is None:
        require_sandbox(allow_unsandboxed)
        return _run_unsandboxed(source, timeout_s)
    with bwrap.prepared(iso, source.encode("utf-8"), budget) as (cmd, fds):
        return _run(cmd, timeout_s, cwd="/", env={}, pass_fds=fds, **bwrap.popen_user(iso))


def _run_unsandboxed(source: str, timeout_s: float) -> SandboxResult:
    workdir = tempfile.mkdtemp(prefix="hdpo-sandbox-")
    try:
        script = os.path.join(workdir, "program.py")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(source)
        cmd = [sys.executable, "-I", "-B", script]
        if network_namespace_available():
            cmd = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--net", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        return _run(cmd, timeout_s, cwd=workdir, env=env, pass_fds=())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(cmd: list[str], timeout_s: float, *, cwd: str, env: dict[str, str], pass_fds: tuple[int, ...],
         **user: Unpack[bwrap.PopenUser]) -> SandboxResult:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds,
                                **user)
    except OSError as exc:
        return SandboxResult(False, "error", None, f"cannot start sandbox: {exc}", 0.0)
    try:
        out, why = _collect(proc, start + timeout_s)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    status = why or ("passed" if proc.returncode == 0 else "failed")
    text = out.decode("utf-8", errors="replace")[-_OUTPUT_LIMIT:]
    if why == "failed":
        text += f"\n[sandbox: output over {_OUTPUT_CAP} bytes; killed]"
    return SandboxResult(status == "passed", status, proc.returncode, text, time.monotonic() - start)


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, str | None]:
    """Read the program's output until it ends, the deadline passes ("timeout") or the cap is hit ("failed").

    The tail is kept (a traceback ends there). The loop stops when the process has exited even if some
    escaped child still holds the pipe (possible only unsandboxed), instead of waiting for end-of-file.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    tail, total = bytearray(), 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(tail), "timeout"
            ready = sel.select(min(left, 0.25))
            chunk = _read(fd) if ready else None
            if chunk == b"":
                return bytes(tail), None
            if chunk:
                total += len(chunk)
                tail += chunk
                del tail[:-_OUTPUT_LIMIT * 4]
                if total > _OUTPUT_CAP:
                    return bytes(tail), "failed"
            elif proc.poll() is not None:
                return bytes(tail) + (_read(fd) or b""), None


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL bwrap's process group (its pid 1 dies, and with it the sandbox's pid namespace)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()

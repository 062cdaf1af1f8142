"""Run untrusted model-written Python (HumanEval-style checks) in a limited subprocess.

A hang, crash, memory blow-up or escape attempt must score as a failure and never stop the evaluation.
Layers, outermost first (none of them alone is a security boundary; together they stop the usual accidents
and the cheap attacks of a language model, which is what HumanEval's own harness aims for):

* **no network**: the child runs under ``unshare --user --map-root-user --net`` (a fresh network namespace
  with only a downed loopback) when that works on this host (checked once); in every case an audit hook in
  the child also refuses socket creation (``socket.__new__``), so the block holds where ``unshare`` is not
  allowed (e.g. containers without user namespaces).
* **resource limits** set in the child before the program runs: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``,
  ``RLIMIT_FSIZE`` (16 MiB files), ``RLIMIT_CORE`` 0, and ``RLIMIT_NPROC`` 0 (no new process for a
  non-root user; the kernel ignores it for root, which is why the audit hook is the fork guard that counts):
  the audit hook refuses ``os.fork``/``subprocess``/``os.system``/``os.exec*``/``os.posix_spawn`` and the
  import of ``ctypes``/``_posixsubprocess`` (the ways around those events). A fork bomb that got through
  anyway dies with the process group at the timeout.
* **filesystem**: a fresh temporary working directory (also ``HOME``/``TMPDIR``), deleted afterwards; the
  audit hook refuses ``open`` for writing and ``os.remove``/``rename``/``mkdir``/``rmdir``/``chmod``/
  ``symlink``/``link``/``truncate`` outside that directory. Reading is allowed (stdlib imports need it).
* **wall-clock timeout**: the child is its own session; on timeout the whole process group is killed.
* stdin is ``/dev/null``; output is captured and truncated; the interpreter runs isolated (``-I``).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

_OUTPUT_LIMIT = 4000

_PRELUDE = r'''
import os, resource, sys
_root = os.path.realpath(os.getcwd())
_mem = {mem}
for _lim, _val in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, {cpu}),
                   (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
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


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run. ``passed`` only when the program exited 0 within the time limit."""

    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error"
    returncode: int | None
    output: str
    seconds: float


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


def run_python(program: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run ``program`` (Python source) in the sandbox; never raises for anything the program does.

    Args:
        program: the full program (e.g. prompt + completion + test + ``check(entry_point)``).
        timeout_s: wall-clock limit; CPU time is limited to ``ceil(timeout_s) + 1`` seconds.
        memory_mb: address-space limit of the child (``RLIMIT_AS``).
    """
    prelude = _PRELUDE.format(mem=int(memory_mb) << 20, cpu=int(timeout_s) + 1)
    workdir = tempfile.mkdtemp(prefix="hdpo-sandbox-")
    try:
        script = os.path.join(workdir, "program.py")
        with open(script, "w", encoding="utf-8") as fh:
            fh.write(prelude + "\n" + program + "\n")
        cmd = [sys.executable, "-I", "-B", script]
        if network_namespace_available():
            cmd = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--net", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return SandboxResult(False, "error", None, f"cannot start sandbox: {exc}", 0.0)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            status = "timeout"
        seconds = time.monotonic() - start
        text = out.decode("utf-8", errors="replace")[-_OUTPUT_LIMIT:]
        return SandboxResult(status == "passed", status, proc.returncode, text, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()

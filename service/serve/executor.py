"""How a job's process is started, watched and stopped: an interface, and the local process pool behind it.

A job is ``hdpo-tune run job.yaml`` in its run folder: the CLI's own pipeline, in its own process, so a crash
of a job never takes the server down and the server never holds a model in memory. Two executors implement
the interface: :class:`LocalExecutor` (processes on this machine, the default) and
:class:`.ray_executor.RayExecutor` (``--executor ray``: the same command on the nodes of a Ray cluster, on a
run folder every node mounts; docs/service.md, "The Ray executor"). An executor may report more than an exit:
a job whose process was lost with its machine (:class:`Lost`: the scheduler starts it again, and it resumes
from its checkpoint), a job that can never run (:class:`CannotRun`: it fails with that reason), notes that
become job events, and jobs that outlive the server (``keeps_jobs``: a restarted server re-attaches with
``attach``).

"No job runs twice at the same time" is kept by the run folder, not by the database alone: the local
executor takes the run folder's own lock (:mod:`service.runfolder.lock`, the same lock and file as ``hdpo-tune run``)
and hands the locked descriptor to the job process, which holds it until it exits, even if the server dies
first. A restarted server that finds the lock held waits.
The job process gets SIGTERM when the server's scheduler thread dies (``PR_SET_PDEATHSIG``): it writes a
checkpoint and exits, and the restarted server resumes it from there.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal, Protocol

from hdpo_core.errors import InputError
from hdpo_core.layout import JOB_FILE, JOB_LOG
from service.runfolder.lock import FD_ENV, InUse, lock_fd, lock_held

_PR_SET_PDEATHSIG = 1


#: An event the executor has for the job (placement, queueing): its level and message.
Note = tuple[Literal["info", "warn", "error"], str]

class Busy(Exception):
    """The run folder is still held by a job process (of this server or of a previous one)."""


class Lost(Exception):
    """The job's process ended without exiting (its machine or its executor's worker died): not the job's own
    failure; the scheduler starts it again from its last checkpoint. The message says what was lost."""


class CannotRun(Exception):
    """The job can never start as asked (no machine could ever hold it): it fails with this message."""

    def __init__(self, message: str, code: str = "job_failed") -> None:
        super().__init__(message)
        self.message, self.code = message, code


class JobProcess(Protocol):
    pid: int | None
    error: str | None  # why it failed, when the executor (not the job's status.json) knows

    def notes(self) -> list[Note]:
        """(level, message) pairs that happened since the last call (placement, queueing), for the job's events."""

    def poll(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal), else None."""

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM: the pipeline checkpoints and exits with 130)."""


class Executor(Protocol):
    keeps_jobs: bool  # True: jobs run outside the server's process tree and are left running when it stops

    def attach(self, job_id: str, run_dir: Path) -> JobProcess | None:
        """The job's process if it still runs from before the server restarted (None: start it again)."""

    def start(self, job_id: str, run_dir: Path, *, attempt: int, slot: int) -> JobProcess:
        """Start ``hdpo-tune run run_dir/job.yaml``; raise :class:`Busy` if the folder is still in use."""

    def busy(self, run_dir: Path) -> bool:
        """True while some process holds the run folder."""


def hdpo_tune_command() -> list[str]:
    """The console script next to this Python (the same install as the server), else ``python -m``-style."""
    exe = Path(sys.executable).parent / "hdpo-tune"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the job then outlives a killed server, and the lock keeps a restart from doubling it


def _lock(run_dir: Path) -> int:
    """The run folder's lock on a new descriptor (for the job process); :class:`Busy` while it is held."""
    try:
        return lock_fd(run_dir.resolve(), name_holder=False)  # a scheduler tick never waits
    except InUse:
        raise Busy(str(run_dir)) from None
    except InputError as exc:  # the lock file is a link or cannot be created: the job cannot start
        raise OSError(errno.EPERM, exc.message) from None


class LocalProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._p = popen
        self.pid: int | None = popen.pid
        self.error: str | None = None

    def notes(self) -> list[Note]:
        return []

    def poll(self) -> int | None:
        return self._p.poll()

    def terminate(self) -> None:
        if self._p.poll() is None:
            self._p.send_signal(signal.SIGTERM)


class LocalExecutor:
    """Job processes on this machine; ``gpus`` (device ids) are handed out one per slot."""

    keeps_jobs = False  # job processes die with the server (parent-death signal) and are resumed

    def __init__(self, gpus: list[str] | None = None) -> None:
        self.gpus = gpus or []

    def attach(self, job_id: str, run_dir: Path) -> JobProcess | None:
        return None  # a process of a previous server is not this one's child: it is waited for, then resumed

    def busy(self, run_dir: Path) -> bool:
        return lock_held(run_dir) is True

    def start(self, job_id: str, run_dir: Path, *, attempt: int, slot: int) -> JobProcess:
        fd = _lock(run_dir)
        try:
            env = {**os.environ, FD_ENV: str(fd)}  # the job takes this descriptor's lock as its own
            if self.gpus:
                env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
            log_fd = os.open(run_dir / JOB_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(log_fd, "ab") as log:
                log.write(f"--- {job_id} attempt {attempt}\n".encode())
                log.flush()
                popen = subprocess.Popen([*hdpo_tune_command(), "run", JOB_FILE], cwd=run_dir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(fd,), start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            os.close(fd)  # the child holds the lock now (same open file description) until it exits
        return LocalProcess(popen)

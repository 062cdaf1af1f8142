"""One process per run folder: an exclusive lock on ``RUN/.hdpo-tune.lock``, held for the life of the process.

The lock is an *open file description* lock (Linux ``F_OFD_SETLK``), not ``flock``, for two reasons:

* it can be probed without being taken (``F_OFD_GETLK``). A reader of ``status.json`` asks "is the run that
  wrote ``running`` still alive?" this way; probing with ``flock(LOCK_SH|LOCK_NB)`` would hold the lock for an
  instant and make a run starting at that instant fail with "in use".
* it belongs to the open file, so it travels with a file descriptor into a child process (``hdpo-tune serve``
  takes the lock, starts ``hdpo-tune run`` with the descriptor and the variable :data:`FD_ENV`, and closes
  its own copy: the job holds the lock until it exits, even if the server dies first).

The kernel drops the lock when the last descriptor closes, SIGKILL included, so there is never a stale lock
to remove. The lock file is opened without following links (``O_NOFOLLOW`` relative to the folder's
descriptor) and must be a regular file: a ``.hdpo-tune.lock`` that is a link is refused, never truncated.
It holds the owner's pid so a refusal can name it; the pid is informative, the kernel lock is the truth.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hdpo_core.errors import InputError
from hdpo_core.layout import LOCK as LOCK

FD_ENV = "HDPO_TUNE_LOCK_FD"
#: Linux ``struct flock`` on 64-bit machines: l_type, l_whence, l_start, l_len, l_pid (and padding).
_FLOCK = struct.Struct("@hhqqi4x")
#: How long a refused run waits for the winner to write its pid into the lock file (it does so at once).
PID_WAIT_S = 30.0

_HELD: dict[Path, int] = {}  # folder -> descriptor of its held lock (kept open for the life of the process)


class InUse(InputError):
    """The run folder's lock is held by another process."""


_T = TypeVar("_T")


def _ofd(fd: int, cmd: int, kind: int) -> int:
    """One ``F_OFD_*`` call on the whole file; returns the resulting ``l_type``."""
    return _FLOCK.unpack(fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0)))[0]


def refuse_entry(path: Path, st: os.stat_result, field: str = "output.dir") -> InputError:
    """The one line for an entry where hdpo-tune keeps its own file or folder that is not one."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            what = f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            what = "a symbolic link"
    else:
        what = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return InputError(f"{field}: {path} is {what} where hdpo-tune keeps its own file or folder; hdpo-tune never "
                      "follows a link or opens a special file in its run folder: remove it, or choose another "
                      "output.dir")


def open_lock_file(folder: Path, *, create: bool) -> int | None:
    """A descriptor of ``folder/.hdpo-tune.lock`` (read-write when ``create``, else read-only), never through
    a link; None when it does not exist and ``create`` is false. Raises :class:`InputError` when it is not a
    regular file, ``OSError`` when the folder cannot be opened."""
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            st = os.stat(LOCK, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                return None
        else:
            if not stat.S_ISREG(st.st_mode):
                raise refuse_entry(folder / LOCK, st)
        flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(LOCK, flags, 0o644, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a link between the check and the open
                raise refuse_entry(folder / LOCK, os.stat(LOCK, dir_fd=dfd, follow_symlinks=False)) from None
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise refuse_entry(folder / LOCK, st)
    return fd


def _on_lock_file(folder: Path, read: Callable[[int], _T]) -> _T | None:
    """``read(fd)`` on ``folder``'s lock file opened without creating it; None when there is none, or it is not a
    regular file, or the folder cannot be read."""
    try:
        fd = open_lock_file(folder, create=False)
    except (InputError, OSError):
        return None
    if fd is None:
        return None
    try:
        return read(fd)
    finally:
        os.close(fd)


def lock_held(folder: Path) -> bool | None:
    """Whether some process holds ``folder``'s lock (this one included), without taking it; None when it cannot
    be told (no lock file: nothing hdpo-tune ran there took one; not a regular file; an unreadable folder)."""

    def held(fd: int) -> bool | None:
        try:
            return _ofd(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK) != fcntl.F_UNLCK
        except OSError:
            return None

    return _on_lock_file(folder, held)


def read_pid(folder: Path) -> int | None:
    """The pid written in ``folder``'s lock file (the last owner's; informative only)."""
    return _on_lock_file(folder, _pid_in)


def _pid_in(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holds(pid: int, fd: int) -> bool:
    """Whether process ``pid`` has the lock file open (so the pid in the file is the holder's, not a stale one
    left by a process that died). True when /proc cannot tell (another user's process)."""
    me = os.fstat(fd)
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    for entry in entries:
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{pid}/fd/{entry}")
            if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
                return True
    return False


def _holder(fd: int) -> int | None:
    """The pid of the lock's holder, waiting briefly for a winner of a simultaneous start to write it."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        pid = _pid_in(fd)
        if pid is not None and pid != os.getpid() and _holds(pid, fd):
            return pid
        if time.monotonic() > deadline or _ofd(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK) == fcntl.F_UNLCK:
            return None
        time.sleep(0.01)


def _inherited(folder: Path) -> int | None:
    """The locked descriptor a parent (``hdpo-tune serve``) handed over in :data:`FD_ENV`, if it is this
    folder's lock file; the variable is removed so this process's own children do not take it for theirs."""
    value = os.environ.pop(FD_ENV, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        have, want = os.fstat(fd), os.stat(folder / LOCK, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(want.st_mode) or (have.st_dev, have.st_ino) != (want.st_dev, want.st_ino):
        return None
    os.set_inheritable(fd, False)
    return fd


def lock_fd(folder: Path, *, inherit: bool = False, name_holder: bool = True) -> int:
    """Take ``folder``'s lock on a new descriptor and write this pid into it; returns the descriptor.
    Raises :class:`InUse` naming the holder's pid (``name_holder``: waiting up to :data:`PID_WAIT_S` for it),
    :class:`InputError` for a lock file that is not a regular file or cannot be created."""
    path = folder / LOCK
    fd = _inherited(folder) if inherit else None
    if fd is None:
        try:
            fd = open_lock_file(folder, create=True)
        except OSError as exc:
            raise InputError(f"output.dir: cannot create the lock file {path} ({exc.strerror}); choose a folder "
                             "you can write") from None
    assert fd is not None
    try:
        _ofd(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK)
    except OSError as exc:
        owner = _holder(fd) if name_holder and exc.errno in (errno.EAGAIN, errno.EACCES) else None
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            who = f"pid {owner}" if owner else "another process"
            raise InUse(f"output.dir: {folder} is in use by {who} (another hdpo-tune run); wait for it to "
                        "finish, or choose another output.dir") from None
        raise InputError(f"output.dir: cannot lock {path} ({exc.strerror}); choose a local folder") from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class RunLock:
    """This process's lock on ``folder``, held until the process ends (or :meth:`release`). Re-entrant within
    one process (the pipeline and a stage may both ask for it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    @property
    def held(self) -> bool:
        return self.folder in _HELD

    def acquire(self) -> None:
        if self.folder not in _HELD:
            _HELD[self.folder] = lock_fd(self.folder, inherit=True)

    def release(self) -> None:
        fd = _HELD.pop(self.folder, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                _ofd(fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK)
            os.close(fd)

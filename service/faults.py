"""I/O faults as one line: disk full, quota, read-only file system, permission denied, file exists.

Writers deep in the libraries raise :class:`OSError` (with ``errno`` and usually the file name) or, for
safetensors, a ``SafetensorError`` that is *not* an ``OSError`` and carries only the OS error text ("No space
left on device (os error 28)"). :func:`fault_error` turns either into one :class:`HdpoError` line naming the
path (the file when known, else the run folder) and what to do. The exit code is 2 when the user's choice is
the cause (a read-only or unwritable ``output.dir``), else 1 (the disk filled up while running).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from hdpo_core.errors import HdpoError, InputError, RunError

#: errno -> (what to do, caused by the user's input)
_ADVICE: dict[int, tuple[str, bool]] = {
    errno.ENOSPC: ("free disk space and rerun the same command (finished work is kept)", False),
    errno.EDQUOT: ("the disk quota is exhausted: free space or raise the quota, then rerun", False),
    errno.EROFS: ("the file system is read-only: choose a writable output.dir", True),
    errno.EACCES: ("permission denied: choose an output.dir this user can write, or fix its permissions", True),
    errno.EPERM: ("operation not permitted: choose an output.dir this user can write", True),
    errno.EEXIST: ("a file is in the way: remove it or choose another output.dir", True),
    errno.ENOTDIR: ("a file is where a folder must be: choose another output.dir", True),
    errno.EISDIR: ("a folder is where a file must be: choose another output.dir", True),
    errno.EIO: ("the device reported an I/O error: check the disk, then rerun", False),
}
_OS_ERROR = re.compile(r"os error (\d+)")


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    if type(exc).__name__ == "SafetensorError":
        m = _OS_ERROR.search(str(exc))
        return int(m.group(1)) if m else None
    return None


def fault_error(exc: BaseException, stage: str, folder: Path, *, writes: bool = True) -> HdpoError | None:
    """One-line error for an I/O fault ``exc`` raised while ``stage`` wrote into ``folder`` (read from it, for a
    stage that only reads, like the push); None when ``exc`` is not an I/O fault (the caller re-raises it)."""
    code = _errno_of(exc)
    name = getattr(exc, "filename", None)
    where = str(name) if name else str(folder)
    if code is not None and not writes:  # the advice below is about choosing where to write: not for a reader
        return RunError(f"{stage}: cannot read {where} ({os.strerror(code)}); check that file and its disk, "
                        "then rerun the same command")
    if code in _ADVICE:
        advice, users = _ADVICE[code]
        message = f"{stage}: cannot write {where} ({os.strerror(code)}); {advice}"
        return InputError(message) if users else RunError(message)
    if isinstance(exc, OSError) and exc.strerror:
        return RunError(f"{stage}: {where}: {exc.strerror}; check the path, then rerun")
    return None

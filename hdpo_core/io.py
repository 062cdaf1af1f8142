"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Each writer writes a temporary file in the destination's folder (same filesystem, so the rename is atomic),
flushes and fsyncs it, then ``os.replace``s it over the destination and fsyncs the folder so the rename
itself survives a power cut. On any error the temporary file is removed and the destination is untouched.

:func:`note` is called after every file written, renamed or removed by these writers and by
:mod:`hdpo_core.artifact`: a no-op, the one seam where the fault tests stop the process at an exact point.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def note(kind: str, path: str | os.PathLike[str]) -> None:
    """After a file was written (``write``), renamed (``rename``) or removed (``remove``): calls the hook."""
    _after_op(kind, path)


def _after_op(kind: str, path: str | os.PathLike[str]) -> None:
    """Nothing; replaced in the fault-injection tests (``tests/reliability/faults``) to kill the process here."""


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename or a new entry in it survives a power cut (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folder must exist); returns the path."""
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        note("write", tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
    note("rename", dest)
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: object, *, indent: int | None = 2) -> Path:
    """JSON version of :func:`atomic_write_bytes` (keys in insertion order, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``, or None when it is absent, unreadable or torn: a reader deciding "done" treats
    a damaged marker as "not done" rather than failing with a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

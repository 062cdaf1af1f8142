"""Who owns a run folder, what hdpo-tune wrote in it, and one run at a time.

A run folder belongs to hdpo-tune (the way ``.git`` belongs to git): it is usable when it does not exist, is
empty, or carries the marker :data:`MARKER` that hdpo-tune writes when it creates or adopts an empty one. Any
other folder (a data folder, a home folder, a model folder) is refused before anything is written, because
a run writes ``metrics.jsonl``, ``final/``, ``checkpoints/`` ... and ``--force`` removes them.

The marker is also the manifest: the top-level names hdpo-tune created in the folder (:data:`OUTPUTS` only).
``--force`` removes those names and nothing else, so a file a user put next to them survives. A folder
hdpo-tune created (``final/``, ``eval/``) is its own as a whole.

:class:`RunLock` holds an OS lock (``fcntl.flock``) on :data:`LOCK` for the life of the process: a second run
on the same folder stops with "in use by pid N"; the kernel drops the lock when the process ends, even by
SIGKILL, so there is never a stale lock to remove. The lock is advisory: readers (``status.json`` polling,
``hdpo-tune validate``) are not blocked.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from hdpo_core.artifact import ASIDE_SUFFIX, TEMP_SUFFIX
from hdpo_core.errors import InputError
from hdpo_core.io import atomic_write_json

MARKER = ".hdpo-tune.json"
LOCK = ".hdpo-tune.lock"

#: The folders a run builds aside and renames into place (:mod:`hdpo_core.artifact`).
ARTIFACT_FOLDERS = ("final", "start_model", "eval", "merged", "onnx", "gguf", "checkpoints")

#: Every top-level name a run (or a sweep) may create in its folder (an artifact's temporary and moved-aside
#: names included, so ``--force`` and the clean-up after a kill treat them as hdpo-tune's).
OUTPUTS = frozenset({
    MARKER, LOCK, "job.resolved.yaml", "status.json", "versions.json", "data_info.json", "metrics.jsonl",
    "tensorboard", "sweep", "tracking.json",
    *(name + suffix for name in ARTIFACT_FOLDERS for suffix in ("", TEMP_SUFFIX, ASIDE_SUFFIX)),
})

#: Folders that are never a run folder, whatever they hold (the user's home is added at check time).
SYSTEM_FOLDERS = frozenset(Path(p) for p in (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/proc", "/root", "/run",
    "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/mnt", "/media"))

_HELD: dict[Path, int] = {}  # folder -> fd of its held lock (kept open for the life of the process)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def check_location(folder: Path, field: str = "output.dir") -> Path:
    """Refuse obviously wrong run folders (``/``, system folders, the home folder, an existing file); returns
    the resolved path. Raises :class:`InputError` (one line)."""
    resolved = folder.expanduser().resolve()
    if resolved in SYSTEM_FOLDERS or resolved == Path.home().resolve():
        raise InputError(f"{field}: {resolved} is a system or home folder, not a run folder; use a new "
                         "subfolder, e.g. runs/my-job")
    if resolved.exists() and not resolved.is_dir():
        raise InputError(f"{field}: {resolved} is a file, not a folder; give a folder path (new, empty, or an "
                         "earlier run of hdpo-tune)")
    return resolved


def is_owned(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def claim(folder: Path, field: str = "output.dir") -> None:
    """Create ``folder`` (or adopt an empty one) with the marker; accept one that already carries it.
    Anything else raises :class:`InputError` naming the folder and what to do."""
    check_location(folder, field)
    if folder.is_dir() and is_owned(folder):
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"{field}: {folder} already holds files that hdpo-tune did not write (no {MARKER}); "
                         "choose a new or empty folder: hdpo-tune never writes into, or removes from, "
                         "someone else's folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / MARKER, {"created_by": "hdpo-tune", "created_at": _now(), "written": [MARKER]})
    except OSError as exc:
        raise InputError(f"{field}: cannot write the run folder {folder} ({exc.strerror or exc}"
                         f"{_where(exc, folder)}); point {field} to a writable folder (in a container: a writable "
                         "-v mount that the --user uid may write)") from None


def _where(exc: OSError, folder: Path) -> str:
    return f": {exc.filename}" if exc.filename and Path(str(exc.filename)) != folder else ""


def written(folder: Path) -> set[str]:
    """The names the manifest says hdpo-tune created in ``folder`` (empty when there is no marker)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    names = data.get("written") if isinstance(data, dict) else None
    return {n for n in names if isinstance(n, str) and n in OUTPUTS} if isinstance(names, list) else set()


def record(folder: Path, names: Iterable[str]) -> None:
    """Add ``names`` (those in :data:`OUTPUTS`) to the folder's manifest."""
    new = {n for n in names if n in OUTPUTS}
    have = written(folder)
    if new <= have:
        return
    data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    data["written"] = sorted(have | new)
    atomic_write_json(folder / MARKER, data)


def record_new(folder: Path, before: set[str]) -> None:
    """Record the output names present now that were absent in ``before`` (a listing taken earlier)."""
    with contextlib.suppress(OSError):
        record(folder, listing(folder) - before)


def listing(folder: Path) -> set[str]:
    try:
        return {p.name for p in folder.iterdir()}
    except OSError:
        return set()


def remove_written(folder: Path, names: Iterable[str]) -> list[str]:
    """Remove those of ``names`` that hdpo-tune wrote (the manifest); returns what was removed. Never touches
    a name the manifest does not list."""
    mine = written(folder)
    removed = []
    for name in sorted(set(names) & mine):
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_inputs_not_outputs(folder: Path, inputs: dict[str, str | None]) -> None:
    """Raise :class:`InputError` when an input (``field -> path``) is a path the run writes: the run folder
    itself or anything under one of its output names. An output must never replace an input."""
    root = folder.expanduser().resolve()
    problems = []
    for field, value in inputs.items():
        if not value:
            continue
        p = Path(value).expanduser()
        if not p.is_absolute():
            continue  # a Hub id
        p = p.resolve()
        if p == root:
            problems.append(f"{field}: {value} is the run folder itself (output.dir); give the run its own folder")
            continue
        if root in p.parents and p.relative_to(root).parts[0] in OUTPUTS:
            problems.append(f"{field}: {value} lies where the run writes its {p.relative_to(root).parts[0]}; "
                            "move the input out of output.dir or choose another output.dir")
    if problems:
        raise InputError("\n".join(problems))


class RunLock:
    """An exclusive OS lock on ``folder/.hdpo-tune.lock``, held until the process ends (or :meth:`release`).

    Re-entrant within one process (the pipeline and a stage may both ask for it). The lock file holds the
    owner's pid so the refusal can name it; the pid is informative only, the kernel lock is the truth."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    def acquire(self) -> None:
        if self.folder in _HELD:
            return
        path = self.folder / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"output.dir: cannot create the lock file {path} ({exc.strerror}); choose a folder "
                             "you can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f"pid {owner}" if owner else "another process"
                raise InputError(f"output.dir: {self.folder} is in use by {who} (another hdpo-tune run); wait "
                                 "for it to finish, or choose another output.dir") from None
            raise InputError(f"output.dir: cannot lock {path} ({exc.strerror}); choose a local folder") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[self.folder] = fd
        with contextlib.suppress(OSError, ValueError):  # a folder without the marker (merge on an old run)
            record(self.folder, [LOCK])

    def release(self) -> None:
        fd = _HELD.pop(self.folder, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

"""Who owns a run folder, what hdpo-tune wrote in it, and one run at a time.

A run folder belongs to hdpo-tune (the way ``.git`` belongs to git): it is usable when it does not exist, is
empty, or carries the marker :data:`MARKER` that hdpo-tune writes when it creates or adopts an empty one. Any
other folder (a data folder, a home folder, a model folder) is refused before anything is written, because
a run writes ``metrics.jsonl``, ``final/``, ``checkpoints/`` ... and ``--force`` removes them.

The marker is also the manifest: the top-level names hdpo-tune created in the folder (:data:`OUTPUTS` only;
every name comes from :mod:`hdpo_core.layout`).
``--force`` removes those names and nothing else, so a file a user put next to them survives. A folder
hdpo-tune created (``final/``, ``eval/``) is its own as a whole.

:class:`RunLock` (:mod:`.lock`) holds an OS lock on :data:`LOCK` for the life of the process: a second run
on the same folder stops with "in use by pid N". :func:`open_folder` takes it *before* claiming the folder, so
two runs started at the same instant end with one running and the other refused by the lock.

The run folder is not a path to follow. Its own path is resolved once, when a command opens it; inside it,
every entry where hdpo-tune keeps its own file or folder (:data:`OUTPUTS`, and everything under those folders)
must be a real file or folder: a link, FIFO, device or socket there is refused with one line naming it
(:func:`check_entries`), and removals go through directory descriptors that never follow a link
(:func:`remove`), so nothing outside the folder is written, truncated or deleted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from hdpo_core.errors import InputError
from hdpo_core.io import atomic_write_json
from hdpo_core.layout import ARTIFACT_FOLDERS, LOCK, MARKER, OUTPUTS, RESOLVED_SPEC
from service.runfolder.lock import RunLock, refuse_entry

__all__ = ["ARTIFACT_FOLDERS", "LOCK", "MARKER", "OUTPUTS", "RunLock", "check_entries", "claim", "open_existing",
           "open_folder", "remove", "remove_written"]

#: The most a marker (a short JSON list of names) may hold; a bigger one is not hdpo-tune's.
MARKER_MAX_BYTES = 1 << 20

#: Folders that are never a run folder, whatever they hold (the user's home is added at check time).
SYSTEM_FOLDERS = frozenset(Path(p) for p in (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/proc", "/root", "/run",
    "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/mnt", "/media"))


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
    """Whether ``folder`` carries the marker (a regular file, not a link to one)."""
    try:
        return stat.S_ISREG(os.stat(folder / MARKER, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _ours_before_marker(name: str) -> bool:
    """Names hdpo-tune creates in a folder before its marker exists: the lock, the marker's temporary file."""
    return name == LOCK or name.startswith(f".{MARKER}.") and name.endswith(".tmp")


def _foreign(folder: Path, *, marker: bool = False) -> bool:
    """Whether ``folder`` holds a name hdpo-tune did not create. ``marker``: the marker itself counts as ours
    too (the check before the lock: the run that holds the lock may write its marker between ``is_owned`` and
    this listing; whether a marker is really ours is checked again under the lock, by :func:`claim`)."""
    try:
        return any(not (_ours_before_marker(p.name) or marker and p.name == MARKER) for p in folder.iterdir())
    except OSError:
        return False


def _not_ours(folder: Path, field: str) -> InputError:
    return InputError(f"{field}: {folder} already holds files that hdpo-tune did not write (no {MARKER}); "
                      "choose a new or empty folder: hdpo-tune never writes into, or removes from, "
                      "someone else's folder")


def _cannot_write(exc: OSError, folder: Path, field: str) -> InputError:
    return InputError(f"{field}: cannot write the run folder {folder} ({exc.strerror or exc}{_where(exc, folder)}); "
                      f"point {field} to a writable folder (in a container: a writable -v mount that the --user "
                      "uid may write)")


def claim(folder: Path, field: str = "output.dir") -> None:
    """Create ``folder`` (or adopt an empty one) with the marker; accept one that already carries it.
    Anything else raises :class:`InputError` naming the folder and what to do. The lock file (and the
    marker's temporary file) of a run that holds the lock count as hdpo-tune's: call it under the lock."""
    check_location(folder, field)
    if folder.is_dir() and is_owned(folder):
        return
    if folder.is_dir() and _foreign(folder):
        raise _not_ours(folder, field)
    written = [MARKER, LOCK] if (folder / LOCK).exists() else [MARKER]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / MARKER, {"created_by": "hdpo-tune", "created_at": _now(), "written": written})
    except OSError as exc:
        raise _cannot_write(exc, folder, field) from None


def open_folder(folder: Path, field: str = "output.dir") -> Path:
    """Open a run folder to write (``hdpo-tune run``): resolve it once, refuse someone else's folder before
    creating anything in it, take the lock, refuse links and special files where hdpo-tune keeps its own,
    then claim it. Returns the resolved path. Lock before claim: of two runs started at the same instant,
    one claims and the other is refused by the lock ("in use by pid N"), never by the other's half-written
    marker."""
    root = check_location(folder, field)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        st = os.stat(root / MARKER, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise refuse_entry(root / MARKER, st, field)
    if root.is_dir() and not is_owned(root) and _foreign(root, marker=True):
        raise _not_ours(root, field)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(exc, root, field) from None
    RunLock(root).acquire()
    check_entries(root, field)
    claim(root, field)
    return root


def open_existing(folder: Path, field: str = "RUN_DIR") -> Path:
    """Open an existing run folder (``hdpo-tune merge|export|push|eval RUN``): resolved once, its entries
    checked, its lock taken. Returns the resolved path."""
    root = check_location(folder, field)
    check_entries(root, field)
    if not is_owned(root) and not (root / RESOLVED_SPEC).is_file():  # nothing is created in someone else's folder
        raise InputError(f"{root / RESOLVED_SPEC} not found: {field} must be a run folder written by `hdpo-tune run`")
    RunLock(root).acquire()
    with contextlib.suppress(OSError, ValueError):  # a folder without the marker (a run of an old version)
        record(root, [LOCK])
    return root


def check_entries(folder: Path, field: str = "output.dir") -> None:
    """Raise :class:`InputError` (one line naming it) for the first entry where hdpo-tune keeps its own file
    or folder that is a link, FIFO, device or socket: the top-level :data:`OUTPUTS` and everything under the
    folders among them. Nothing is followed or opened to find out (``lstat`` only)."""
    for name in sorted(OUTPUTS):
        path = folder / name
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(f"{field}: cannot read {path} ({exc.strerror or exc})") from None
        if stat.S_ISDIR(st.st_mode):
            _check_tree(path, field)
        elif not stat.S_ISREG(st.st_mode):
            raise refuse_entry(path, st, field)


def _check_tree(folder: Path, field: str) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _check_tree(Path(entry.path), field)
            elif not stat.S_ISREG(st.st_mode):
                raise refuse_entry(Path(entry.path), st, field)


def _where(exc: OSError, folder: Path) -> str:
    return f": {exc.filename}" if exc.filename and Path(str(exc.filename)) != folder else ""


def written(folder: Path) -> set[str]:
    """The names the manifest says hdpo-tune created in ``folder`` (empty when there is no marker)."""
    try:
        data = json.loads(_read_own_file(folder / MARKER, MARKER_MAX_BYTES))
    except (OSError, ValueError):
        return set()
    names = data.get("written") if isinstance(data, dict) else None
    return {n for n in names if isinstance(n, str) and n in OUTPUTS} if isinstance(names, list) else set()


def _read_own_file(path: Path, limit: int) -> str:
    """The text of one of hdpo-tune's files, opened without following a link (``OSError`` if it is one, or
    not a regular file, or larger than ``limit``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise OSError(f"{path} is not one of hdpo-tune's files")
        return fh.read(limit + 1).decode("utf-8")


def record(folder: Path, names: Iterable[str]) -> None:
    """Add ``names`` (those in :data:`OUTPUTS`) to the folder's manifest."""
    new = {n for n in names if n in OUTPUTS}
    have = written(folder)
    if new <= have:
        return
    data = json.loads(_read_own_file(folder / MARKER, MARKER_MAX_BYTES))
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
    a name the manifest does not list, never follows a link (a link is removed, not what it points to)."""
    mine = written(folder)
    return [name for name in sorted(set(names) & mine) if remove(folder, name)]


def remove(folder: Path, rel: str) -> bool:
    """Remove ``folder/rel`` (a file, a link itself, or a whole folder) without following a link on the way:
    each folder of ``rel`` is opened relative to the previous one with ``O_NOFOLLOW``, and ``shutil.rmtree``
    works on descriptors from there. Returns whether something was removed; ``OSError`` (``ELOOP``,
    ``ENOTDIR``) when a folder on the way is a link or not a folder."""
    *parents, last = PurePosixPath(rel).parts
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parents:
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return False
            os.close(fd)
            fd = sub
        try:
            st = os.stat(last, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(last, dir_fd=fd)
        else:
            os.unlink(last, dir_fd=fd)
        return True
    finally:
        os.close(fd)


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

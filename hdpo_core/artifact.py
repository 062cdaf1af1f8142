"""Artifact folders that are whole or absent: built aside, checked, renamed into place, verified on use.

Every folder hdpo-tune produces (``final/``, ``merged/``, ``onnx/``, ``gguf/``, ``eval/``, ``start_model/``,
each checkpoint) is built the way package managers install a package:

1. written into a temporary sibling ``NAME.tmp`` (same file system, so the renames below are atomic);
2. every file fsynced, the folder checked (the files the artifact needs are there and non-empty);
3. the manifest :data:`MANIFEST` written LAST: the relative path, size and sha256 of every other file;
4. the old ``NAME`` renamed aside to ``NAME.old``, ``NAME.tmp`` renamed to ``NAME``, the parent fsynced;
5. ``NAME.old`` removed.

A kill before step 4 leaves ``NAME`` as it was; a kill between the two renames leaves no ``NAME`` at all (the
next run rebuilds it); a kill during step 5 leaves a partial ``NAME.old``, never taken for anything. Whoever
uses an artifact (a rerun deciding "done", "up to date", a resume, a push) calls :func:`verify`: a folder
whose files do not match its manifest, or that has none, is not the artifact. :func:`remove_leftovers`
removes what a killed build leaves (``NAME.tmp``, ``NAME.old``), only real folders, never through a link.

Why a manifest and not one marker file: a marker says a build finished once; only the files themselves say
the folder still holds what was built (a kill while deleting a folder removes the marker last or first,
depending on the order of the directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from .io import fsync_dir, note
from .layout import ASIDE_SUFFIX as ASIDE_SUFFIX
from .layout import MANIFEST as MANIFEST
from .layout import TEMP_SUFFIX as TEMP_SUFFIX
from .layout import is_real_dir as is_real_dir


def temp_path(dest: Path) -> Path:
    """Where ``dest`` is built before it is renamed into place."""
    return dest.with_name(dest.name + TEMP_SUFFIX)


def aside_path(dest: Path) -> Path:
    """Where the previous ``dest`` waits while the new one is renamed into place."""
    return dest.with_name(dest.name + ASIDE_SUFFIX)


def remove_tree(path: Path) -> None:
    """Remove ``path`` (a folder or a file) without following any link: a link inside is removed as a link,
    its target untouched. Each removed file is :func:`~hdpo_core.io.note`\\ d."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        os.unlink(path)
        note("remove", path)
        return
    with os.scandir(path) as entries:
        children = [Path(e.path) for e in entries]
    for child in children:
        remove_tree(child)
    os.rmdir(path)
    note("remove", path)


def remove_leftovers(dest: Path) -> list[Path]:
    """Remove ``dest.tmp`` and ``dest.old`` left by a killed build (real folders only; a link or a file of that
    name is left alone: it is not hdpo-tune's). Returns what was removed."""
    removed = []
    for left in (temp_path(dest), aside_path(dest)):
        if is_real_dir(left):
            remove_tree(left)
            removed.append(left)
    return removed


def discard(dest: Path) -> None:
    """Remove the artifact ``dest`` whole: renamed aside in one step, then removed (a kill during the removal
    leaves ``dest.old``, never a ``dest`` with some files gone). A link or a file is not touched."""
    if not is_real_dir(dest):
        return
    old = aside_path(dest)
    if is_real_dir(old):
        remove_tree(old)
    os.rename(dest, old)
    note("rename", old)
    fsync_dir(dest.parent)
    remove_tree(old)


def begin(dest: Path) -> Path:
    """A fresh, empty ``dest.tmp`` to build ``dest`` in (leftovers of an earlier build removed first)."""
    remove_leftovers(dest)
    tmp = temp_path(dest)
    if os.path.lexists(tmp):
        raise FileExistsError(f"{tmp} exists and is not a folder hdpo-tune builds in; move it away")
    tmp.mkdir(parents=True)
    return tmp


def _files(folder: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder`` (links are not followed, nor listed)."""
    out = []
    for here, dirs, names in os.walk(folder, followlinks=False):
        base = Path(here)
        out += [(base / n).relative_to(folder).as_posix() for n in names if (base / n).is_file()
                and not (base / n).is_symlink()]
        dirs.sort()
    return sorted(out)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (and the folders), so the manifest never describes data still only in
    the page cache."""
    for name in _files(folder):
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        note("write", folder / name)
    for here, _dirs, _names in os.walk(folder, topdown=False):
        fsync_dir(Path(here))


def write_manifest(folder: Path) -> Path:
    """Write ``folder/checksums.json``: size and sha256 of every other file, then fsync it."""
    files = {n: {"size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
             for n in _files(folder) if n != MANIFEST}
    path = folder / MANIFEST
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"algorithm": "sha256", "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(folder)
    note("write", path)
    return path


def check_required(folder: Path, required: Iterable[str]) -> str | None:
    """What is wrong with a built folder before it is published: a required file absent or empty."""
    for name in required:
        f = folder / name
        if not f.is_file() or f.stat().st_size == 0:
            return f"{name} is missing or empty"
    return None


def publish(tmp: Path, dest: Path, *, required: Iterable[str] = (), aside: Path | None = None) -> Path:
    """Make the finished build ``tmp`` the artifact ``dest`` (steps 2-5 of the module docstring)."""
    problem = check_required(tmp, required)
    if problem:
        raise RuntimeError(f"{dest}: the build is incomplete ({problem})")
    fsync_tree(tmp)
    write_manifest(tmp)
    old = aside or aside_path(dest)
    if is_real_dir(old):
        remove_tree(old)
    moved = False
    if os.path.lexists(dest):
        if not is_real_dir(dest):
            raise FileExistsError(f"{dest} is not a folder hdpo-tune wrote (a file or a link); move it away")
        os.rename(dest, old)
        note("rename", old)
        moved = True
    os.rename(tmp, dest)
    note("rename", dest)
    fsync_dir(dest.parent)
    if moved:
        remove_tree(old)
    return dest


@contextlib.contextmanager
def building(dest: Path, *, required: Iterable[str] = ()) -> Iterator[Path]:
    """``with building(dest) as tmp:`` write the artifact into ``tmp``; on success it is published as ``dest``,
    on any error (or a signal) ``tmp`` is removed and ``dest`` is untouched."""
    tmp = begin(dest)
    try:
        yield tmp
        publish(tmp, dest, required=required)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise


def replace_files(dest: Path, files: dict[str, bytes]) -> bool:
    """Republish the artifact ``dest`` with ``files`` (name -> content) written over its own; a no-op (False)
    when every one already holds that content. The unchanged files are hard links (no copy of the weights);
    a folder that does not hard-link (another file system) is copied."""
    import shutil

    if all((dest / n).is_file() and (dest / n).read_bytes() == data for n, data in files.items()):
        return False
    with building(dest) as tmp:
        for name in _files(dest):
            if name == MANIFEST or name in files:
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(dest / name, tmp / name, follow_symlinks=False)
            except OSError:
                shutil.copy2(dest / name, tmp / name, follow_symlinks=False)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return True


_verified: dict[tuple[str, tuple[tuple[str, int, int, int], ...]], str | None] = {}


def verify(folder: Path, *, required: Iterable[str] = ()) -> str | None:
    """``None`` when ``folder`` is a whole artifact, else what is wrong (one short phrase for an error line):
    not a folder (or a link), no or unreadable manifest, a file missing, extra, of another size or content,
    or a ``required`` name absent from the manifest.

    Memoised on the files' identity (name, inode, size, mtime), so checks of the same folder in one process
    hash it once."""
    if not is_real_dir(folder):
        return "missing" if not os.path.lexists(folder) else "not a folder (a file or a link)"
    try:
        names = _files(folder)
        key = (str(folder), tuple((n, st.st_ino, st.st_size, st.st_mtime_ns)
                                  for n in names for st in [os.lstat(folder / n)]))
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if key not in _verified:
        _verified[key] = _check(folder, names, tuple(required))
    return _verified[key]


def read_manifest(folder: Path) -> dict[str, tuple[int, str]] | None:
    """``name -> (size, sha256)`` from the manifest, or None when it is absent or unreadable."""
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {str(n): (int(m["size"]), str(m["sha256"])) for n, m in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _check(folder: Path, names: list[str], required: tuple[str, ...]) -> str | None:
    listed = read_manifest(folder)
    if listed is None:
        if not os.path.lexists(folder / MANIFEST):
            return f"{MANIFEST} is missing (an unfinished or interrupted build)"
        return f"{MANIFEST} is unreadable"
    for name in required:
        if name not in listed:
            return f"{MANIFEST} does not list {name}"
    extra = sorted(set(names) - set(listed) - {MANIFEST})
    if extra:
        return f"{extra[0]} is not in {MANIFEST}"
    for name, (size, digest) in listed.items():
        f = folder / name
        if name.startswith("/") or ".." in Path(name).parts or not f.is_file() or f.is_symlink():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is {f.stat().st_size} bytes, {size} were written (truncated?)"
        if sha256_file(f) != digest:
            return f"{name} does not match its checksum"
    return None

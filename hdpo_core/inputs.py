"""Reading a user's input file: a regular file, opened without blocking, read with a size bound.

Every input hdpo-tune reads (job file, data and task files, model and tokenizer files, accelerate config,
reference cache, uploads) goes through here, so a path that is not a regular file or is far too big is one
:class:`InputError` naming it, never a hang, a crash or gigabytes of memory:

* **a FIFO** would block ``open()`` until a writer appears (forever); a **device** (``/dev/zero``,
  ``/dev/urandom``) never ends; a **socket** cannot be opened. The path is ``stat``-ed first (which never
  blocks) and opened with ``O_NONBLOCK``; the open descriptor is ``fstat``-ed again, so a file swapped for a
  FIFO in between is still refused.
* **size**: the limit is checked on the size the file system reports *before* reading, and the read itself
  asks for at most ``limit + 1`` bytes, so a file that grows meanwhile (or reports size 0, as ``/proc`` files
  do) is still bounded.
* **JSON Lines** (:func:`iter_jsonl`) are read one line at a time with a per-line bound; each row's text must
  be valid Unicode (JSON's ``\\ud800`` escape decodes to a lone surrogate that no tokenizer can encode).

Files handed to a library that opens them itself (transformers, pyarrow, datasets) are checked with
:func:`check_file` / :func:`check_folder` right before the call (stat-first; the library's own read follows).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _stat(path: Path, what: str, missing: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found; {missing}") from None
    except ValueError:  # an embedded NUL byte
        raise InputError(f"{ascii(str(path))}: {what} path holds a NUL byte; remove it from the path") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror}); check the path and permissions") from None


def _refuse(path: Path, what: str, st: os.stat_result, max_bytes: int | None, fix: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: {what} is {_kind(st.st_mode)}, not a regular file; use a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputError(f"{path}: {what} is {_size(st.st_size)}, over the {_size(max_bytes)} limit; {fix}")


def check_file(path: str | os.PathLike[str], what: str, *, max_bytes: int | None = None,
               fix: str = "is this the right file?", missing: str = "check the path") -> Path:
    """Raise :class:`InputError` unless ``path`` is a regular file of at most ``max_bytes``; never blocks."""
    p = Path(path)
    _refuse(p, what, _stat(p, what, missing), max_bytes, fix)
    return p


def open_file(path: str | os.PathLike[str], what: str, *, max_bytes: int | None = None,
              fix: str = "is this the right file?", missing: str = "check the path") -> IO[bytes]:
    """Open a regular file for binary reading (see the module docstring); the caller closes it."""
    p = check_file(path, what, max_bytes=max_bytes, fix=fix, missing=missing)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{p}: cannot read {what} ({exc.strerror}); check the path and permissions") from None
    try:
        _refuse(p, what, os.fstat(fd), max_bytes, fix)  # the path may have been swapped since the stat
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_file(path: str | os.PathLike[str], what: str, *, max_bytes: int, fix: str = "is this the right file?",
              missing: str = "check the path") -> bytes:
    """The whole content of a regular file of at most ``max_bytes``."""
    with open_file(path, what, max_bytes=max_bytes, fix=fix, missing=missing) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise InputError(f"{path}: cannot read {what} ({exc.strerror}); check the file and its disk") from None
    if len(data) > max_bytes:
        raise InputError(f"{path}: {what} is over the {_size(max_bytes)} limit; {fix}")
    return data


def read_json(path: str | os.PathLike[str], what: str, *, max_bytes: int) -> Any:
    """A JSON document of at most ``max_bytes``; any parse problem is one line naming the file."""
    raw = read_file(path, what, max_bytes=max_bytes)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte offset {exc.start}); save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: {what} is invalid JSON ({exc.msg}); fix the file") from None
    except (RecursionError, ValueError) as exc:
        raise InputError(f"{path}: {what} holds a JSON value Python refuses ({str(exc)[:80] or 'nesting too deep'})"
                         "; fix the file") from None


def check_folder(path: str | os.PathLike[str], what: str, *, limits: dict[str, int] | None = None,
                 fix: str = "is this the right folder?") -> Path:
    """Refuse a folder holding an entry that is not a regular file or a folder (a FIFO, device or socket that a
    library would block on or read forever), or a file named in ``limits`` (name -> byte cap; a ``*.ext`` key
    caps every file with that extension) that is over its cap. Entries are checked one level deep."""
    p = Path(path)
    caps = limits or {}
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{p}: cannot list {what} ({exc.strerror}); check the path and permissions") from None
    for entry in entries:
        try:
            st = entry.stat()  # follows links, as the library opening it would
        except OSError:
            continue  # a dangling link: the library reports a missing file if it needs it
        if stat.S_ISDIR(st.st_mode):
            continue
        cap = caps.get(entry.name, caps.get("*" + Path(entry.name).suffix))
        _refuse(Path(entry.path), f"{what} entry", st, cap, fix)
    return p


def check_text(location: str, row: object, *, max_bytes: int, setting: str | None) -> None:
    """Every string of a parsed row must be valid Unicode (no lone surrogate), and the row's text at most
    ``max_bytes`` (UTF-8); ``setting`` names the limit in the message. Iterative: no recursion limit."""
    total, stack = 0, [row]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                total += len(node.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise InputError(f"{location}: text holds a lone surrogate ({ascii(node[exc.start])}, an unpaired "
                                 "\\ud800-\\udfff escape), which is not valid Unicode; fix or remove that "
                                 "character") from None
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        if total > max_bytes:
            raise InputError(row_too_long(location, total, max_bytes, setting))


def row_too_long(location: str, size: int | None, max_bytes: int, setting: str | None) -> str:
    got = f" ({_size(size)})" if size is not None else ""
    limit = f"{setting} ({_size(max_bytes)})" if setting else f"the {_size(max_bytes)} limit"
    raise_it = f", or raise {setting}" if setting else ""
    return f"{location}: row is longer than {limit}{got}; a row is kilobytes of text: shorten or split it{raise_it}"


def iter_jsonl(path: str | os.PathLike[str], what: str, *, max_row_bytes: int,
               setting: str | None = None) -> Iterator[tuple[str, Any]]:
    """``("file:line", value)`` for each non-blank line of a JSON Lines file (a regular file), each line read
    with a bound of ``max_row_bytes`` and checked by :func:`check_text`."""
    p = Path(path)
    with open_file(p, what) as fh:
        for lineno, raw in enumerate(iter(lambda: fh.readline(max_row_bytes + 2), b""), start=1):
            loc = f"{p}:{lineno}"
            body = raw[:-1] if raw.endswith(b"\n") else raw  # + 2: room for a CRLF after a line at the limit
            if len(body[:-1] if body.endswith(b"\r") else body) > max_row_bytes:
                raise InputError(row_too_long(loc, None, max_row_bytes, setting))
            if not raw.strip():
                continue
            yield loc, check_line(loc, raw, max_row_bytes=max_row_bytes, setting=setting)


def check_line(location: str, raw: bytes, *, max_row_bytes: int, setting: str | None = None) -> Any:
    """One JSON Lines line parsed; every problem is one :class:`InputError` naming ``location``."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{location}: not UTF-8 text (byte offset {exc.start} in the line); save the file as "
                         "UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{location}: invalid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON "
                         "object") from None
    except RecursionError:
        raise InputError(f"{location}: JSON nested too deeply; each line must be one flat row object") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{location}: invalid JSON value ({str(exc)[:80]}); each line must be one JSON "
                         "object") from None
    check_text(location, row, max_bytes=max_row_bytes, setting=setting)
    return row


CONFIG_BYTES = 4 << 20  # config.json & co. are kilobytes in every model seen; 100 MB of one array hung the loader
FILE_BYTES = 256 << 20  # any other JSON/text file (tokenizer.json is up to ~35 MB, a shard index ~10 MB)
FOLDER_LIMITS = {"config.json": CONFIG_BYTES, "generation_config.json": CONFIG_BYTES,
                 "adapter_config.json": CONFIG_BYTES, "*.jinja": CONFIG_BYTES,
                 **{f"*.{ext}": FILE_BYTES for ext in ("json", "txt", "model", "tiktoken", "py")}}


def check_model_folder(path: str | os.PathLike[str]) -> None:
    """Before transformers/peft read a local model or adapter folder: every entry is a regular file or a folder
    (a FIFO would block the loader forever, ``/dev/zero`` never ends) and the JSON/text files are within
    :data:`FOLDER_LIMITS` (weights are memory-mapped, not capped). Raises :class:`InputError` naming the file."""
    check_folder(path, "model folder", limits=FOLDER_LIMITS,
                 fix="is this a Hugging Face model folder (save_pretrained output)?")

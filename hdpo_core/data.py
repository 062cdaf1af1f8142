"""Preference data: load rows from local files or the Hub, and normalise TRL's formats.

Formats (TRL's names):

* standard, explicit prompt: ``{"prompt": str, "chosen": str, "rejected": str}``
* standard, implicit prompt: ``{"chosen": str, "rejected": str}``; the prompt is TRL's: the common
  character prefix, less a trailing space (:func:`split_implicit_prompt`); :mod:`hdpo_core.tokenize` then
  cuts it where its tokens and the full sequences' tokens diverge, so it never ends inside a token.
* conversational, explicit prompt: ``prompt``/``chosen``/``rejected`` are lists of ``{role, content}``.
* conversational, implicit prompt: ``chosen``/``rejected`` are full conversations; the shared message
  prefix is the prompt.
* OpenAI's preference fine-tuning rows (``input.messages``, ``preferred_output``, ``non_preferred_output``),
  mapped to the conversational format by :mod:`hdpo_core.openai_format`.

Every problem names ``file:row`` (1-based row; JSONL rows are line numbers) so users can fix their data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InputError
from .inputs import check_file, check_folder, check_text, iter_jsonl, open_file, read_file
from .openai_format import Messages, is_openai_row, openai_to_conversational

MAX_ROW_BYTES = 1 << 20  # default of data.max_row_bytes: a preference pair is kilobytes; see iter_raw_rows
MAX_JSON_FILE_BYTES = 256 << 20  # a .json file is parsed whole; bigger datasets belong in JSONL or Parquet
ROW_SETTING = "data.max_row_bytes"
Format = Literal["standard", "conversational"]


@dataclass(frozen=True)
class PreferenceRow:
    """One normalised preference pair. ``prompt``/``chosen``/``rejected`` are str (standard) or
    lists of ``{"role", "content"}`` dicts (conversational)."""

    prompt: Any
    chosen: Any
    rejected: Any
    format: Format
    source: str  # "file:row", for messages
    implicit_prompt: bool = False  # the prompt was the shared prefix of chosen and rejected
    tools: list[dict[str, Any]] | None = None  # tool schemas handed to the chat template (OpenAI rows)


@dataclass
class RowProblems:
    """Bad rows found while loading; ``skipped`` counts rows dropped per reason."""

    messages: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, message: str) -> None:
        self.messages.append(message)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def iter_raw_rows(path: str, *, split: str = "train", max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` from a local JSONL/JSON/Parquet file, a ``save_to_disk`` folder, or a
    Hub dataset id. Raises :class:`InputError` for unreadable input.

    No row may hold more than ``max_row_bytes`` of text (``data.max_row_bytes``) or a lone surrogate: a
    tokenizer spends time quadratic in a long word (a 4 MiB one took 28 s here) and aborted the whole process on
    a 50 MB one, with no error line. A JSONL line is refused before it is parsed, other rows right after."""
    p = Path(path)
    if p.is_dir():
        yield from _checked_rows(_iter_saved(p, path, split), max_row_bytes)
        return
    if os.path.lexists(p):
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            yield from iter_jsonl(p, "data file", max_row_bytes=max_row_bytes, setting=ROW_SETTING)
        elif suffix == ".json":
            yield from _checked_rows(_iter_json(p), max_row_bytes)
        elif suffix == ".parquet":
            yield from _checked_rows(_iter_parquet(p), max_row_bytes)
        else:
            raise InputError(f"{path}: unsupported data file type '{suffix}'; use .jsonl, .json, .parquet "
                             "or a datasets save_to_disk folder")
        return
    if _looks_like_hub_id(path):
        yield from _checked_rows(_iter_hub(path, split), max_row_bytes)
        return
    raise InputError(f"{path}: data file not found; check the path (relative paths are resolved "
                     "from the job file's folder)")


def _checked_rows(rows: Iterator[tuple[str, Any]], max_row_bytes: int) -> Iterator[tuple[str, Any]]:
    for location, row in rows:
        check_text(location, row, max_bytes=max_row_bytes, setting=ROW_SETTING)
        yield location, row


def _iter_saved(p: Path, path: str, split: str) -> Iterator[tuple[str, Any]]:
    if not (p / "dataset_info.json").exists() and not (p / "dataset_dict.json").exists():
        raise InputError(f"{path}: folder is not a dataset saved with datasets' save_to_disk "
                         "(no dataset_info.json); point data.train at a .jsonl/.json/.parquet file or such a folder")
    for folder in (p, *(d for d in p.iterdir() if d.is_dir())):
        check_folder(folder, "dataset folder")
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # datasets/pyarrow/json raise many types for a damaged folder
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: cannot read the save_to_disk dataset folder ({type(exc).__name__}: "
                         f"{first}); save it again with save_to_disk or export it to .jsonl") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{path}: DatasetDict has splits {sorted(ds)}, not '{split}'")
        ds = ds[split]
    for i, row in enumerate(ds):
        yield f"{path}:{i + 1}", row


def _iter_parquet(p: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    check_file(p, "data file")
    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises many types
        raise InputError(f"{p}: cannot read Parquet file ({type(exc).__name__}: {exc})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{p}:{i + 1}", row


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return (len(parts) == 2 and all(parts) and not path.startswith((".", "/"))
            and not any(path.endswith(s) for s in (".jsonl", ".json", ".parquet")))


def _iter_hub(repo_id: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = ("the Hub is unreachable (offline mode); download the dataset first and point data.train "
                "at a local file") if offline else "check the dataset id and your network"
        raise InputError(f"{repo_id}: cannot load Hub dataset ({type(exc).__name__}); {hint}") from None
    for i, row in enumerate(ds):
        yield f"{repo_id}:{i + 1}", row


def _iter_json(p: Path) -> Iterator[tuple[str, Any]]:
    raw = read_file(p, "data file", max_bytes=MAX_JSON_FILE_BYTES,
                    fix="a .json file is read whole: save the rows as JSONL (one per line) or Parquet")
    try:
        data = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg}); the file must hold a list of objects") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (byte offset {exc.start}); save the file as UTF-8") from None
    except RecursionError:
        raise InputError(f"{p}: JSON nested too deeply; the file must hold a list of row objects") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{p}: invalid JSON value ({str(exc)[:80]}); the file must hold a list of row "
                         "objects") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise InputError(f"{p}: JSON file must hold a list of row objects (or {{\"data\": [...]}})")
    for i, row in enumerate(data):
        yield f"{p}:{i + 1}", row


def _is_messages(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def normalise_row(location: str, row: Any) -> PreferenceRow:
    """Check one raw row and return it normalised; raises :class:`InputError` naming ``location``."""
    if not isinstance(row, dict):
        raise InputError(f"{location}: row must be a JSON object with 'chosen' and 'rejected', got {type(row).__name__}")
    if is_openai_row(row):
        messages = openai_to_conversational(location, row)
        return _checked(location, *messages[:3], "conversational", implicit=False, tools=messages[3])
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            raise InputError(f"{location}: missing field '{key}'; every row needs 'chosen' and 'rejected' "
                             "(and optionally 'prompt')")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    implicit = prompt is None
    whole: tuple[Any, Any] | None = None
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:
            whole = (chosen, rejected)  # the emptiness check reads the texts, not what is left after the prompt
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        elif not isinstance(prompt, str):
            raise InputError(f"{location}: field 'prompt' must be a string like 'chosen'/'rejected', "
                             f"got {type(prompt).__name__}")
        fmt: Format = "standard"
    elif _is_messages(chosen) and _is_messages(rejected):
        if prompt is None:
            prompt, chosen, rejected = _split_common_prefix_messages(chosen, rejected)
        elif not _is_messages(prompt):
            raise InputError(f"{location}: field 'prompt' must be a list of {{role, content}} messages "
                             "like 'chosen'/'rejected'")
        fmt = "conversational"
    else:
        raise InputError(
            f"{location}: 'chosen' and 'rejected' must both be strings (standard format) or both lists of "
            f"{{role, content}} messages (conversational); got {_type_name(chosen)} and {_type_name(rejected)}"
        )
    return _checked(location, prompt, chosen, rejected, fmt, implicit=implicit, tools=None, whole=whole)


def _checked(location: str, prompt: Any, chosen: Any, rejected: Any, fmt: Format, *, implicit: bool,
             tools: list[dict[str, Any]] | None, whole: tuple[Any, Any] | None = None) -> PreferenceRow:
    """The checks every format shares: no empty completion (``whole``: the texts to check instead, for standard
    implicit rows), no pair without a preference."""
    def is_empty(v: Any) -> bool:
        if isinstance(v, str):
            return not v.strip()
        return not any(m["content"].strip() or m.get("tool_calls") for m in v)

    texts = whole if whole is not None else (chosen, rejected)
    empty = [k for k, v in zip(("chosen", "rejected"), texts, strict=True) if is_empty(v)]
    if empty:
        raise InputError(f"{location}: empty completion in '{empty[0]}'; remove the row or fill it in")
    if chosen == rejected:
        raise InputError(f"{location}: 'chosen' is identical to 'rejected', so the pair carries no preference; "
                         "remove the row")
    return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected, format=fmt, source=location,
                         implicit_prompt=implicit, tools=tools)


def _type_name(value: object) -> str:
    if isinstance(value, list):
        return "a list that is not {role, content} messages" if not _is_messages(value) else "messages"
    return type(value).__name__


def split_implicit_prompt(a: str, b: str) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` by TRL's rule (``trl.extract_prompt``), so token ids match TRL's.

    The prompt is the common character prefix, less one trailing space (the space belongs to the next word:
    ``"...green? No"`` / ``"...green? Yes"`` give ``"...green?"``). When one text extends the other (``"A: 14"``
    / ``"A: 146"``) TRL's scan ends one character before the shorter text's end and keeps that character in
    both completions; we do the same. Where TRL's scan misbehaves (texts that differ at their first character
    while ``chosen`` ends with a space: its index wraps to -1 and it rebuilds ``rejected`` from ``chosen``'s
    text) the prompt here is simply empty.
    """
    n = len(os.path.commonprefix([a, b]))
    if n == min(len(a), len(b)):
        n = max(n - 1, 0)
    elif n > 0 and a[n - 1] == " ":
        n -= 1
    return a[:n], a[n:], b[n:]


def _split_common_prefix_messages(a: Messages, b: Messages) -> tuple[Messages, Messages, Messages]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n], a[n:], b[n:]


def load_preference_rows(path: str, *, on_bad_row: Literal["error", "skip"] = "error", split: str = "train",
                         max_row_bytes: int = MAX_ROW_BYTES) -> tuple[list[PreferenceRow], RowProblems]:
    """Load and normalise every row of ``path``.

    With ``on_bad_row="error"`` the first bad row raises :class:`InputError`; with ``"skip"`` bad rows are
    dropped and counted in the returned :class:`RowProblems`. An empty result always raises.
    """
    rows: list[PreferenceRow] = []
    problems = RowProblems()
    formats: set[str] = set()
    for location, raw in iter_raw_rows(path, split=split, max_row_bytes=max_row_bytes):
        try:
            row = normalise_row(location, raw)
        except InputError as exc:
            if on_bad_row == "error":
                raise InputError(f"{exc.message} (or set data.on_bad_row: skip)") from None
            problems.add("bad_row", exc.message)
            continue
        formats.add(row.format)
        rows.append(row)
    if not rows:
        detail = f" ({len(problems.messages)} bad rows skipped, first: {problems.messages[0]})" if problems.messages else ""
        raise InputError(f"{path}: dataset is empty{detail}; it needs at least one preference pair")
    if len(formats) > 1:
        raise InputError(f"{path}: mixes standard (string) and conversational (message list) rows; use one format")
    return rows, problems


def file_fingerprint(path: str) -> str:
    """sha256 of a data file (or of every file in a folder, in name order); the Hub id for remote data."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
    elif os.path.lexists(p):
        files = [p]
    else:
        return "hub:" + path
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open_file(f, "data file") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()

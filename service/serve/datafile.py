"""Checking an uploaded training file with the pipeline's own data loader.

Accepted: TRL's preference formats (what ``hdpo-tune run`` reads; see :mod:`hdpo_core.data`) and OpenAI's DPO
format (``{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}``), which
is turned into TRL's conversational format (prompt = input messages, chosen/rejected = the outputs) and
stored next to the original. The first bad row is reported as ``FILENAME:LINE: what is wrong`` with the
line number, so the client can fix it; the server's own paths never appear in a message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdpo_core.data import iter_raw_rows, normalise_row
from hdpo_core.errors import InputError

OPENAI_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})


@dataclass(frozen=True)
class DataFileInfo:
    rows: int
    data_format: str  # "trl-standard" | "trl-conversational" | "openai-dpo"
    train_path: Path  # the file the pipeline reads (the original, or the TRL conversion)


class BadRow(Exception):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _from_openai(loc: str, row: dict[str, Any]) -> dict[str, Any]:
    inp = row.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
        raise InputError(f"{loc}: 'input' must be an object with a 'messages' list (OpenAI DPO format)")
    if inp.get("tools"):
        raise InputError(f"{loc}: 'input.tools' is not supported (tool definitions cannot be rendered by the "
                         "model's chat template here); remove it")
    for key in ("preferred_output", "non_preferred_output"):
        if not isinstance(row.get(key), list):
            raise InputError(f"{loc}: '{key}' must be a list of {{role, content}} messages (OpenAI DPO format)")
    return {"prompt": inp["messages"], "chosen": row["preferred_output"], "rejected": row["non_preferred_output"]}


def _convert_openai(src: Path, dst: Path, name: str) -> None:
    """Write the TRL form of ``src`` to ``dst`` (a temporary name of the caller's) one row at a time."""
    with src.open("rb") as fh, dst.open("w", encoding="utf-8") as out:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                out.write("\n")  # keeps the converted file's line numbers equal to the original's
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # bad UTF-8 or JSON, a 5000-digit number
                raise BadRow(f"{name}:{lineno}: invalid JSON; each line must be one JSON object", lineno) from None
            if not isinstance(row, dict) or not OPENAI_KEYS & set(row):
                raise BadRow(f"{name}:{lineno}: row is not in OpenAI's DPO format like the rows before it (needs "
                             "input, preferred_output, non_preferred_output); use one format per file", lineno)
            try:
                out.write(json.dumps(_from_openai(f"{name}:{lineno}", row)) + "\n")
            except InputError as exc:
                raise BadRow(exc.message, lineno) from None


def scan_rows(path: Path) -> tuple[int, str]:
    """(rows, "standard" | "conversational"): every row checked by the pipeline's own row check
    (:func:`hdpo_core.data.normalise_row`), one at a time, so checking an upload takes the same memory whatever
    its size. Accepts and refuses exactly what :func:`hdpo_core.data.load_preference_rows` does with
    ``on_bad_row: error`` (a test compares the two), with the same messages."""
    count, formats = 0, set()
    for location, raw in iter_raw_rows(str(path)):
        formats.add(normalise_row(location, raw).format)
        count += 1
    if count == 0:
        raise InputError(f"{path}: dataset is empty; it needs at least one preference pair")
    if len(formats) > 1:
        raise InputError(f"{path}: mixes standard (string) and conversational (message list) rows; use one format")
    return count, formats.pop()


def _first_row_keys(path: Path) -> set[str]:
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):  # bad UTF-8 or JSON, a 5000-digit number
                    return set()
                return set(row) if isinstance(row, dict) else set()
    return set()


def check_upload(path: Path, name: str) -> DataFileInfo:
    """Validate the uploaded JSONL at ``path`` (shown to the client as ``name``); raises :class:`BadRow`.

    Rows are checked exactly as ``hdpo-tune run`` checks them (``data.on_bad_row: error``), so a file accepted
    here fails later only for reasons that need the model (tokenizer, chat template, max_length)."""
    train_path, fmt = path, ""
    if OPENAI_KEYS & _first_row_keys(path):
        train_path, fmt = path.with_suffix(".trl.jsonl"), "openai-dpo"
        _convert_openai(path, train_path, name)
    try:
        rows, row_format = scan_rows(train_path)
    except InputError as exc:
        message = exc.message.replace(str(train_path), name)
        m = re.match(rf"{re.escape(name)}:(\d+):", message)
        raise BadRow(message, int(m.group(1)) if m else None) from None
    return DataFileInfo(rows=rows, data_format=fmt or f"trl-{row_format}", train_path=train_path)


def check_jsonl(path: Path, name: str) -> DataFileInfo:
    """A ``user_data`` file (eval tasks): every non-empty line must be a JSON object; the eval stage checks
    the fields it needs when it runs."""
    rows = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # bad UTF-8 or JSON, a 5000-digit number
                raise BadRow(f"{name}:{lineno}: invalid JSON; each line must be one JSON object", lineno) from None
            if not isinstance(row, dict):
                raise BadRow(f"{name}:{lineno}: each line must be a JSON object, got {type(row).__name__}", lineno)
            rows += 1
    if rows == 0:
        raise BadRow(f"{name}: file is empty; it needs at least one row", None)
    return DataFileInfo(rows=rows, data_format="jsonl", train_path=path)

"""The upload check streams rows (:func:`service.serve.datafile.scan_rows`); it must accept and refuse exactly
what the pipeline's loader (:func:`hdpo_core.data.load_preference_rows`, ``on_bad_row: error``) does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hdpo_core.data import load_preference_rows
from hdpo_core.errors import InputError
from service.serve.datafile import scan_rows

STD = {"prompt": "p", "chosen": "a", "rejected": "b"}
CONV = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}
OPENAI = {"input": {"messages": [{"role": "user", "content": "q"}]},
          "preferred_output": [{"role": "assistant", "content": "a"}],
          "non_preferred_output": [{"role": "assistant", "content": "b"}]}
FILES = {
    "standard": [STD] * 3, "conversational": [CONV] * 2, "implicit": [{"chosen": "x y", "rejected": "x z"}],
    "openai": [OPENAI], "mixed": [STD, CONV], "empty": [], "missing": [STD, STD, {"chosen": "a"}],
    "not_object": [STD, [1, 2]], "empty_text": [{"prompt": "p", "chosen": "", "rejected": "b"}],
}


def _lines(rows: list[object]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.mark.parametrize("name", [*FILES, "bad_utf8", "long_int", "blank_lines"])
def test_scan_rows_equals_the_loader(tmp_path: Path, name: str) -> None:
    raw = {"bad_utf8": _lines([STD]) + b"\xff\xfe\n", "long_int": _lines([STD]) + b"1" * 5000 + b"\n",
           "blank_lines": b"\n\n" + _lines([STD]) + b"\n  \n"}.get(name) or _lines(FILES[name])
    path = tmp_path / "rows.jsonl"
    path.write_bytes(raw)
    try:
        rows, _ = load_preference_rows(str(path), on_bad_row="error")
        expected: tuple[int, str] | str = (len(rows), rows[0].format)
    except InputError as exc:
        expected = exc.message.replace(" (or set data.on_bad_row: skip)", "")
    try:
        got: tuple[int, str] | str = scan_rows(path)
    except InputError as exc:
        got = exc.message
    assert got == expected

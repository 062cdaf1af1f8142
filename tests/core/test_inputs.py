"""``hdpo_core.inputs``: the one way to read a user's file (regular, non-blocking, bounded), in-process.

The console-script tests (``tests/reliability/test_nonregular_inputs.py``) show each command; these pin the
helper's edges: every kind of non-regular file, a file that grows past its size after the check, a line exactly
at the row limit, and the row text walk.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from hdpo_core.errors import InputError
from hdpo_core.inputs import check_file, check_folder, check_text, iter_jsonl, open_file, read_file, read_json


def test_each_non_regular_kind_is_named(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s"))
        for path, kind in ((fifo, "a FIFO (named pipe)"), (tmp_path / "s", "a socket"),
                           (Path("/dev/zero"), "a character device"), (tmp_path, "a folder")):
            with pytest.raises(InputError, match="^" + re.escape(f"{path}: data file is {kind}, not a regular file")):
                open_file(path, "data file")
    with pytest.raises(InputError, match="data file not found; check the path"):
        check_file(tmp_path / "missing", "data file")
    with pytest.raises(InputError, match="path holds a NUL byte"):
        check_file(str(tmp_path / "a\0b"), "data file")


def test_a_link_to_a_fifo_is_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "f")
    with pytest.raises(InputError, match="is a FIFO"):
        list(iter_jsonl(tmp_path / "link.jsonl", "data file", max_row_bytes=100))


def test_size_is_checked_before_and_while_reading(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_bytes(b"[" + b"1," * 600 + b"1]")
    with pytest.raises(InputError, match=r"config is 1203 bytes, over the 1000 bytes limit; fix it"):
        read_file(f, "config", max_bytes=1000, fix="fix it")
    assert read_json(f, "config", max_bytes=2000) == [1] * 601
    # /proc files report size 0 yet hold more: the bounded read still stops
    with pytest.raises(InputError, match="over the 10 bytes limit"):
        read_file("/proc/self/status", "status", max_bytes=10)


def test_rows_at_and_over_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "rows.jsonl"
    at = json.dumps({"t": "x" * 10})
    f.write_bytes(f"{at}\r\n\n{at}x\n".encode())
    rows = iter_jsonl(f, "data file", max_row_bytes=len(at), setting="data.max_row_bytes")
    assert next(rows) == (f"{f}:1", {"t": "x" * 10})  # a line exactly at the limit (plus CRLF) passes
    with pytest.raises(InputError, match=rf"^{f}:3: row is longer than data.max_row_bytes \({len(at)} bytes\)"):
        next(rows)


def test_row_text_walk() -> None:
    check_text("f:1", {"a": ["x" * 5, {"b": "y"}]}, max_bytes=8, setting=None)  # keys are text too
    with pytest.raises(InputError, match=r"f:1: row is longer than the 7 bytes limit \(8 bytes\)"):
        check_text("f:1", {"a": ["x" * 5, {"b": "y"}]}, max_bytes=7, setting=None)
    with pytest.raises(InputError, match=r"f:2: text holds a lone surrogate \('\\udc80'"):
        check_text("f:2", {"chosen": [{"content": "ok \udc80"}]}, max_bytes=100, setting=None)
    deep: list = []
    node = deep
    for _ in range(100_000):  # deeper than Python's recursion limit: the walk is iterative
        node.append([])
        node = node[0]
    check_text("f:3", deep, max_bytes=10, setting=None)


def test_folder_entries(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 50)
    (tmp_path / "sub").mkdir()
    check_folder(tmp_path, "model folder", limits={"config.json": 10, "*.json": 100})
    with pytest.raises(InputError, match=r"tokenizer.json: model folder entry is 50 bytes, over the 40 bytes"):
        check_folder(tmp_path, "model folder", limits={"config.json": 10, "*.json": 40})
    os.mkfifo(tmp_path / "vocab.txt")
    with pytest.raises(InputError, match=r"vocab.txt: model folder entry is a FIFO"):
        check_folder(tmp_path, "model folder")

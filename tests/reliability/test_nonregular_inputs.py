"""No input can hang or crash a job (issue 23, point 3), through the real console script.

Each hostile input is given to ``hdpo-tune run`` and ``hdpo-tune validate`` (and ``eval`` / ``launch`` where
that command is the one reading it): exit code 2, exactly one line naming the path (or ``file:row``, or the spec
field), no traceback. Every subprocess has a timeout, so a regression to the old hang fails the test instead of
hanging the suite: before the fix the FIFOs blocked forever, ``/dev/zero`` was read whole, the 50 MB row
aborted the process inside the tokenizer library, the NUL byte and the lone surrogate were tracebacks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.reliability._jobs import write_job
from tests.reliability._proc import hdpo

TIMEOUT = 300  # only a hang guard (each command takes seconds)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "prefs.jsonl"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        yield path


def rows_plus(pairs: Path, extra_line: str, folder: Path) -> Path:
    """The tiny pairs with one more JSONL line (row 17) appended."""
    out = folder / "prefs.jsonl"
    out.write_text(pairs.read_text() + extra_line + "\n", encoding="utf-8")
    return out


def model_copy(model: Path, folder: Path) -> Path:
    out = folder / "model"
    shutil.copytree(model, out)
    return out


def check(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, one line (``error: ...`` for run, one problem under the header for validate), no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    problems = [ln for ln in proc.stderr.splitlines() if ln.startswith("  ")]
    lines = errors or problems
    assert len(lines) == 1, proc.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def both(job: Path, *expected: str) -> None:
    for command in ("validate", "run"):
        check(hdpo(command, str(job), timeout=TIMEOUT), *expected)


# --- the job file itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_job_file_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    job = fifo(tmp_path / "job.yaml") if kind == "fifo" else Path("/dev/zero")
    what = "is a FIFO (named pipe)" if kind == "fifo" else "is a character device"
    for command in ("validate", "run"):
        check(hdpo(command, str(job), cwd=tmp_path, timeout=TIMEOUT), f"{job}: job file {what}, not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["job.yaml"] if kind == "fifo" else [])


# --- data files ---------------------------------------------------------------------------------------------

def test_a_data_file_that_is_a_fifo(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``run`` checks every input's kind before it touches the run folder: refused at once, nothing written."""
    data = fifo(tmp_path / "prefs.jsonl")
    job = write_job(tmp_path, tiny_model_dir, data)
    check(hdpo("validate", str(job), timeout=TIMEOUT), f"{data}: data file is a FIFO (named pipe), not a regular file")
    check(hdpo("run", str(job), timeout=TIMEOUT), f"{data}: data.train is a FIFO (named pipe), not a regular file")
    assert not (tmp_path / "run").exists()


def test_a_data_file_that_is_a_socket(tmp_path: Path, tiny_model_dir: Path, unix_socket: Path) -> None:
    check(hdpo("validate", str(write_job(tmp_path, tiny_model_dir, unix_socket)), timeout=TIMEOUT),
          f"{unix_socket}: data file is a socket")


def test_a_50_mb_single_word_row_is_one_line_naming_the_limit(tmp_path: Path, tiny_model_dir: Path,
                                                              tiny_pairs: Path) -> None:
    row = json.dumps({"prompt": "Q:", "chosen": " " + "a" * (50 << 20), "rejected": " b"})
    data = rows_plus(tiny_pairs, row, tmp_path)
    job = write_job(tmp_path, tiny_model_dir, data)
    both(job, f"{data}:17: row is longer than data.max_row_bytes (1.0 MiB)", "raise data.max_row_bytes")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and f"{data}:17" in status["error"]


def test_the_row_limit_is_a_setting(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    """A longer (but sane) row passes once data.max_row_bytes allows it: the limit is the user's to raise."""
    row = json.dumps({"prompt": "Q:", "chosen": " " + "word " * 300, "rejected": " b"})
    data = rows_plus(tiny_pairs, row, tmp_path)
    job = write_job(tmp_path, tiny_model_dir, data, extra={"data": {"max_row_bytes": 1000}})
    check(hdpo("validate", str(job), timeout=TIMEOUT), f"{data}:17: row is longer than data.max_row_bytes (1000 bytes)")
    job = write_job(tmp_path, tiny_model_dir, data, extra={"data": {"max_row_bytes": 4000}})
    ok = hdpo("validate", str(job), timeout=TIMEOUT)
    assert ok.returncode == 0, ok.stderr[-3000:]


def test_a_lone_surrogate_in_a_row_is_one_line(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    data = rows_plus(tiny_pairs, '{"prompt": "Q:", "chosen": " a\\ud800", "rejected": " b"}', tmp_path)
    both(write_job(tmp_path, tiny_model_dir, data), f"{data}:17: text holds a lone surrogate")


def test_a_nul_byte_in_a_path_is_one_line_naming_the_field(tmp_path: Path, tiny_model_dir: Path,
                                                           tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs)
    spec = yaml.safe_load(job.read_text())
    spec["data"]["train"] = str(tiny_pairs) + "\0.jsonl"
    job.write_text(yaml.safe_dump(spec))
    both(job, f"{job}: data.train: the value holds a NUL byte")
    assert not (tmp_path / "run").exists()


# --- model folder, task file, accelerate config ---------------------------------------------------------------

def test_a_100_mb_config_json_is_refused_before_it_is_parsed(tmp_path: Path, tiny_model_dir: Path,
                                                             tiny_pairs: Path) -> None:
    model = model_copy(tiny_model_dir, tmp_path)
    config = json.loads((model / "config.json").read_text())
    head = json.dumps({**config, "junk": []})[:-2].encode()  # ... "junk": [   (the array left open)
    with (model / "config.json").open("wb") as fh:
        fh.write(head)
        for _ in range(100):
            fh.write(b"1," * (1 << 19))
        fh.write(b"1]}")
    both(write_job(tmp_path, model, tiny_pairs), f"{model}/config.json: model folder entry is 100.0 MiB, "
                                                 "over the 4.0 MiB limit")


def test_a_tokenizer_file_that_is_a_fifo(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    model = model_copy(tiny_model_dir, tmp_path)
    (model / "tokenizer.json").unlink()
    fifo(model / "tokenizer.json")
    check(hdpo("run", str(write_job(tmp_path, model, tiny_pairs)), timeout=TIMEOUT),
          f"{model}/tokenizer.json: model folder entry is a FIFO")
    assert not (tmp_path / "run").exists()


def test_a_task_file_that_is_a_fifo(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    """Read only after training, yet refused by ``validate`` and at the start of ``run`` (nothing written)."""
    tasks = fifo(tmp_path / "tasks.jsonl")
    proc = hdpo("eval", str(tiny_model_dir), "--tasks", str(tasks), "--verifier", "exact", "--n", "1",
                "--out", str(tmp_path / "eval"), timeout=TIMEOUT)
    check(proc, f"{tasks}: task file is a FIFO (named pipe), not a regular file")
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, extra={"eval": {"tasks": str(tasks), "verifier": "exact"}})
    both(job, f"{tasks}: eval.tasks is a FIFO (named pipe), not a regular file")
    assert not (tmp_path / "run").exists()


def test_an_accelerate_config_that_is_a_fifo(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    config = fifo(tmp_path / "accelerate.yaml")
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, extra={"distributed": {"accelerate_config": str(config)}})
    check(hdpo("launch", "--dry-run", str(job), timeout=TIMEOUT),
          f"{config}: accelerate config is a FIFO (named pipe), not a regular file")

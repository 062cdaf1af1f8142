"""The build script is deterministic: a quick build twice gives the same bytes, and (slow) the full build
regenerates the shipped model and data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.demo._demo import DEMO_DIR, read_checksums, sha256

SCRIPT = DEMO_DIR / "build_demo.py"
# Byte-exact artifacts: data and tokenizer. Weights are compared numerically, configs as JSON.
EXACT = ("data/train.jsonl", "data/eval.jsonl", "data/tasks_eval.jsonl", "model/tokenizer.json",
         "model/chat_template.jinja")


def _build(out: Path, *args: str, timeout: int) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], check=True, timeout=timeout,
                   capture_output=True, text=True)


def _assert_same_build(a: Path, b: Path) -> None:
    for name in EXACT:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between builds"
    for name in ("model/config.json", "model/generation_config.json", "model/tokenizer_config.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max().item() <= 1e-6, key


def test_quick_build_is_deterministic_and_self_consistent(tmp_path: Path) -> None:
    _build(tmp_path / "a", "--quick", timeout=300)
    _build(tmp_path / "b", "--quick", timeout=300)
    _assert_same_build(tmp_path / "a", tmp_path / "b")
    for folder in (tmp_path / "a", tmp_path / "b"):
        sums = read_checksums(folder)
        assert all(sha256(folder / name) == digest for name, digest in sums.items())
    report = json.loads((tmp_path / "a" / "build_report.json").read_text())
    lines = (tmp_path / "a" / "data" / "train.jsonl").read_text().splitlines()
    assert report["train_pairs"] == len(lines) and report["tasks_eval"] == 16


@pytest.mark.slow
def test_full_build_regenerates_the_shipped_files(tmp_path: Path) -> None:
    _build(tmp_path, timeout=1800)
    _assert_same_build(DEMO_DIR, tmp_path)
    shipped = json.loads((DEMO_DIR / "build_report.json").read_text())
    rebuilt = json.loads((tmp_path / "build_report.json").read_text())
    for key in ("accuracy_t1", "accuracy_t05", "train_pairs", "eval_pairs", "params", "sft_final_loss"):
        assert rebuilt[key] == shipped[key], key

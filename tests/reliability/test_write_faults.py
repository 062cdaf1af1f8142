"""Faults inside a run, in-process (issue 7): a disk that fills up while writing a checkpoint or the final
model, and non-finite loss or gradients. Each gives one clear line naming the step, exit code 1, no
traceback, keeps every earlier checkpoint intact, writes nothing outside the run folder, and a rerun
resumes from the last good checkpoint."""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from hdpo_core import checkpoint as ckpt_mod
from hdpo_core import trainer as trainer_mod
from service.stages import train as train_stage
from tests.reliability._jobs import (
    STEPS,
    assert_same_weights,
    changed_outside,
    checkpoint_dirs,
    final_weights,
    metric_records,
    run_cli,
    snapshot,
    status,
    write_job,
)


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_error_line(result: Any) -> str:
    lines = re.findall(r"error: [^\r\n]*", result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clean exit, not a crash
    return lines[0]


def _checkpoint_loads(path: Path, step: int) -> dict[str, torch.Tensor]:
    assert json.loads((path / "state.json").read_text())["step"] == step
    weights = load_file(str(path / "trainable.safetensors"))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    torch.load(path / "optimizer.pt", weights_only=True)
    return weights


def test_disk_full_at_the_second_checkpoint(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path,
                                            reference_final: dict[str, torch.Tensor],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    job = write_job(tmp_path / "job", tiny_model_dir, tiny_pairs, save_every=1)
    run = tmp_path / "job" / "run"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    calls = []
    real_save = ckpt_mod.save_file

    def full_on_second(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            _enospc()
        real_save(*args, **kwargs)

    before = snapshot(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "save_file", full_on_second)
        result = run_cli("run", str(job))

    assert result.exit_code == 1, result.output
    line = _one_error_line(result)
    assert line.startswith("error: step 2: cannot write the checkpoint"), line
    assert "No space left on device" in line and "step-00000001" in line and "rerun" in line, line
    assert checkpoint_dirs(run) == ["step-00000001"]  # no temp folder, no torn step-2
    _checkpoint_loads(run / "checkpoints" / "step-00000001", 1)
    st = status(run)
    assert st["state"] == "failed" and st["stage"] == "train" and "step 2" in st["error"]
    assert not (run / "final").exists()
    assert changed_outside(before, snapshot(tmp_path), "job/run") == []

    again = run_cli("run", str(job))
    assert again.exit_code == 0, again.output
    assert "resuming from step-00000001 (step 1)" in again.output
    assert [r["step"] for r in metric_records(run)] == list(range(1, STEPS + 1))
    assert_same_weights(final_weights(run), reference_final)


def test_disk_full_while_writing_the_final_model(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=3, save_every=1)
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train_stage, "_write_final", _enospc)
        result = run_cli("run", str(job))
    assert result.exit_code == 1, result.output
    line = _one_error_line(result)
    assert "cannot write the final model" in line and "No space left on device" in line, line
    assert checkpoint_dirs(run) == ["step-00000001", "step-00000002"]
    for step in (1, 2):
        _checkpoint_loads(run / "checkpoints" / f"step-{step:08d}", step)
    assert not (run / "final").exists() and not (run / "final.tmp").exists()

    again = run_cli("run", str(job))
    assert again.exit_code == 0, again.output
    assert "resuming from step-00000002 (step 2)" in again.output
    assert final_weights(run)


def _inject_nonfinite(monkeypatch: pytest.MonkeyPatch, at_step: int, what: str) -> None:
    """Make step ``at_step``'s loss (``what="loss"``) or gradients (``"grad"``) NaN, after the real work."""
    real = trainer_mod.run_micro_batches
    calls = []

    def wrapped(micro: Any, pairs: Any, make_batch: Any, scorer: Any, *args: Any, **kwargs: Any) -> Any:
        sums = real(micro, pairs, make_batch, scorer, *args, **kwargs)
        calls.append(1)
        if len(calls) == at_step:
            if what == "loss":
                sums.add("loss", math.nan)
            else:
                for p in scorer.parameters():
                    if p.grad is not None:
                        p.grad.fill_(math.inf)
        return sums

    monkeypatch.setattr(trainer_mod, "run_micro_batches", wrapped)


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    job = write_job(tmp_path / "job", tiny_model_dir, tiny_pairs, steps=4, save_every=1, on_nonfinite="stop")
    run = tmp_path / "job" / "run"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = snapshot(tmp_path)
    _inject_nonfinite(monkeypatch, 3, what)
    result = run_cli("run", str(job))

    assert result.exit_code == 1, result.output
    line = _one_error_line(result)
    expected = "loss=nan" if what == "loss" else "grad_norm="
    assert line.startswith(f"error: step 3: non-finite {expected}"), line
    assert "last good checkpoint" in line and "step-00000002" in line and "on_nonfinite" in line, line
    assert checkpoint_dirs(run) == ["step-00000001", "step-00000002"]
    _checkpoint_loads(run / "checkpoints" / "step-00000002", 2)
    st = status(run)
    assert st["state"] == "failed" and "step 3" in st["error"]
    assert [r["step"] for r in metric_records(run)] == [1, 2]
    assert not (run / "final").exists()
    assert changed_outside(before, snapshot(tmp_path), "job/run") == []


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_nonfinite_skip_finishes_and_marks_the_skipped_step(
        tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=4, save_every=1, keep_checkpoints=10,
                    on_nonfinite="skip")
    run = tmp_path / "run"
    _inject_nonfinite(monkeypatch, 3, what)
    result = run_cli("run", str(job))

    assert result.exit_code == 0, result.output
    assert re.search(r"warning: step 3: non-finite \S+; update skipped", result.stderr), result.stderr
    records = metric_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["skipped"] for r in records] == [False, False, True, False]
    if what == "loss":
        assert records[2]["loss"] is None  # NaN is written as null (valid JSON)
    else:
        assert records[2]["grad_norm"] is None
    ckpts = run / "checkpoints"
    w2 = _checkpoint_loads(ckpts / "step-00000002", 2)
    w3 = _checkpoint_loads(ckpts / "step-00000003", 3)
    w4 = _checkpoint_loads(ckpts / "step-00000004", 4)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the skipped step did not move the weights
    assert any(not torch.equal(w3[k], w4[k]) for k in w3)  # and training went on after it
    assert all(torch.isfinite(v).all() for v in final_weights(run).values())

"""Checkpoints you can trust (trust issue, point 3): every checkpoint carries the checksums of its files, written
last; a rerun skips a damaged newest checkpoint with one warning line naming it, resumes from the newest good
one and ends with the uninterrupted run's weights; none good is one error line, exit 1, status failed.

The damaged runs are made the real way: the standard job stopped by a full disk at its fourth checkpoint (steps
4, 8 and 12 written, every file fsynced), then a file of the newest checkpoint damaged as a crash, a bad disk or
a careless copy would."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hdpo_core import checkpoint as ckpt_mod
from tests.reliability._jobs import (
    assert_same_weights,
    final_weights,
    metric_records,
    run_cli,
    status,
    write_job,
)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_pairs: Path) -> Path:
    """The job folder of a run stopped (disk full) at its 4th checkpoint: step-4, step-8 and step-12 on disk."""
    folder = tmp_path_factory.mktemp("stopped") / "job"
    job = write_job(folder, tiny_model_dir, tiny_pairs, save_every=4, keep_checkpoints=3)
    calls: list[int] = []
    real_save = ckpt_mod.save_file

    def full_on_fourth(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(ckpt_mod, "save_file", full_on_fourth)
    try:
        result = run_cli("run", str(job))
    finally:
        mp.undo()
    assert result.exit_code == 1, result.output
    names = sorted(p.name for p in (folder / "run" / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000008", "step-00000012"], names
    return folder


def _copy(stopped_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "job"
    shutil.copytree(stopped_run, folder)
    return folder / "job.yaml", folder / "run"


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        f = ckpt / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return damage


def _flip_a_byte(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        f = ckpt / name
        data = bytearray(f.read_bytes())
        data[-3] ^= 0x01  # inside the last tensor's data: still a valid file, silently different weights
        f.write_bytes(bytes(data))
    return damage


# the faults the issue saw crash a rerun: each one resumed for real (the console's in-process run)
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-weights": (_truncate("trainable.safetensors"), "trainable.safetensors is"),
    "broken-state-json": (lambda c: (c / "state.json").write_text("{not json"), "state.json is"),
    "truncated-optimizer": (_truncate("optimizer.pt"), "optimizer.pt is"),
}
# more damage, checked at the choice of checkpoint (the same function the rerun uses)
MORE_DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped-weight-byte": (_flip_a_byte("trainable.safetensors"), "trainable.safetensors does not match"),
    "flipped-optimizer-byte": (_flip_a_byte("optimizer.pt"), "optimizer.pt does not match"),
    "truncated-scheduler": (_truncate("scheduler.pt"), "scheduler.pt is"),
    "missing-rng": (lambda c: (c / "rng.pt").unlink(), "rng.pt is missing"),
    "state-without-step": (lambda c: (c / "state.json").write_text("{}"), "state.json is"),
    "broken-checksums": (lambda c: (c / ckpt_mod.MANIFEST).write_text("[]"), "checksums.json is unreadable"),
    "checksums-missing-a-file": (lambda c: (c / ckpt_mod.MANIFEST).write_text('{"files": {}}'),
                                 "checksums.json does not list"),
}


def test_a_checkpoint_records_the_checksums_of_its_files_last(stopped_run: Path) -> None:
    ckpt = stopped_run / "run" / "checkpoints" / "step-00000012"
    manifest = json.loads((ckpt / ckpt_mod.MANIFEST).read_text())
    assert set(manifest["files"]) == {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    assert all(len(m["sha256"]) == 64 for m in manifest["files"].values())
    newest = max(ckpt.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == ckpt_mod.MANIFEST
    assert ckpt_mod.verify_checkpoint(ckpt) is None


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_checkpoint_is_skipped_and_resume_is_exact(stopped_run: Path, tmp_path: Path, damage: str,
                                                                  reference_final: dict[str, torch.Tensor]) -> None:
    job, run = _copy(stopped_run, tmp_path)
    make_damage, reason = DAMAGES[damage]
    make_damage(run / "checkpoints" / "step-00000012")

    result = run_cli("run", str(job))

    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if "damaged" in ln]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: checkpoint {run}/checkpoints/step-00000012 is damaged ({reason}")
    assert "resuming from step-00000008 (step 8)" in result.stderr
    assert_same_weights(final_weights(run), reference_final)  # same final weights as the uninterrupted run
    assert [r["step"] for r in metric_records(run)] == list(range(1, 17))  # each step logged once


@pytest.mark.parametrize("damage", sorted(MORE_DAMAGES))
def test_more_damage_is_detected_and_the_previous_checkpoint_chosen(stopped_run: Path, tmp_path: Path,
                                                                    damage: str) -> None:
    _, run = _copy(stopped_run, tmp_path)
    ckpts = run / "checkpoints"
    make_damage, reason = MORE_DAMAGES[damage]
    make_damage(ckpts / "step-00000012")
    path, skipped = ckpt_mod.usable_checkpoint(ckpts)
    assert path == ckpts / "step-00000008"
    assert len(skipped) == 1 and skipped[0].startswith(
        f"warning: checkpoint {ckpts}/step-00000012 is damaged ({reason}"), skipped


def test_every_checkpoint_damaged_is_one_error_exit_1_status_failed(stopped_run: Path, tmp_path: Path) -> None:
    job, run = _copy(stopped_run, tmp_path)
    for name in ("step-00000004", "step-00000008", "step-00000012"):
        _truncate("trainable.safetensors")(run / "checkpoints" / name)
    before = {p.name: p.stat().st_size for p in (run / "checkpoints").rglob("*")}

    result = run_cli("run", str(job))

    assert result.exit_code == 1, result.output
    errors = re.findall(r"error: [^\r\n]*", result.stderr)
    assert len(errors) == 1 and "Traceback" not in result.output, result.stderr
    assert f"no usable checkpoint under {run}/checkpoints" in errors[0]
    assert "step-00000012: trainable.safetensors is" in errors[0] and "--force" in errors[0]
    st = status(run)
    assert st["state"] == "failed" and "no usable checkpoint" in st["error"]
    assert {p.name: p.stat().st_size for p in (run / "checkpoints").rglob("*")} == before  # nothing deleted


def test_checkpoints_from_before_checksums_are_verified_by_loading(stopped_run: Path, tmp_path: Path) -> None:
    _, run = _copy(stopped_run, tmp_path)
    ckpts = run / "checkpoints"
    for p in ckpts.iterdir():
        (p / ckpt_mod.MANIFEST).unlink()
    assert ckpt_mod.verify_checkpoint(ckpts / "step-00000012") is None
    _truncate("optimizer.pt")(ckpts / "step-00000012")
    assert ckpt_mod.verify_checkpoint(ckpts / "step-00000012") == "optimizer.pt does not load"
    path, skipped = ckpt_mod.usable_checkpoint(ckpts)
    assert path == ckpts / "step-00000008" and len(skipped) == 1

"""SIGKILL at random moments, many inside a checkpoint write (issue 7).

One job (16 steps, a checkpoint every step) is started and killed 12 times in a row with seeded random
timing: half the kills are aimed at the moment a checkpoint's temporary folder appears (the write is in
progress), half at a random time after start (model loading, a training step, a status write...). Each
kill resumes from the previous one. After every kill: every checkpoint that counts as complete loads
(state.json, safetensors, optimizer state), a temporary folder is never taken for a checkpoint, status.json
and job.resolved.yaml parse. At the end a plain rerun finishes with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hdpo_core import checkpoint as ckpt_mod
from hdpo_core.checkpoint import clean_partial, latest_checkpoint, list_checkpoints, save_checkpoint
from tests.reliability import _child
from tests.reliability._jobs import (
    STEPS,
    assert_same_weights,
    final_weights,
    max_abs_diff,
    metric_records,
    run_cli,
    status,
    write_job,
)

KILLS = 12
FSYNC_DELAY = 0.02


def _complete_steps(root: Path) -> int:
    last = latest_checkpoint(root)
    return int(last.name.split("-")[1]) if last else 0


def _temp_folders(root: Path, step: int, stale: set[str]) -> list[Path]:
    """Temp folders of checkpoint ``step`` written by the current child (not left over by an earlier kill)."""
    found = root.glob(f".tmp-step-{step:08d}-*") if root.exists() else []
    return [p for p in found if p.name not in stale]


def _check_after_kill(run: Path) -> None:
    root = run / "checkpoints"
    for ckpt in list_checkpoints(root):
        assert not ckpt.name.startswith(".tmp"), ckpt
        assert ckpt_mod.verify_checkpoint(ckpt) is None, ckpt  # its checksums hold, whenever the kill came
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        assert state["step"] == int(ckpt.name.split("-")[1])
        weights = load_file(str(ckpt / "trainable.safetensors"))
        assert weights and all("lora_" in k and torch.isfinite(v).all() for k, v in weights.items())
        assert torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    if (run / "status.json").exists():
        json.loads((run / "status.json").read_text(encoding="utf-8"))
    if (run / "job.resolved.yaml").exists():
        assert yaml.safe_load((run / "job.resolved.yaml").read_text(encoding="utf-8"))["train"]["max_steps"] == STEPS


def test_repeated_sigkill_never_leaves_a_torn_checkpoint_and_resume_is_exact(
        tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path, reference_final: dict[str, torch.Tensor]) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, save_every=1)
    run, root, log = tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "child.log"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([_child.__name__])
    rng = random.Random(1234)
    mid_write = 0
    t0 = time.monotonic()
    for i in range(KILLS):
        before = _complete_steps(root)
        stale = {p.name for p in root.iterdir()} if root.exists() else set()
        # Never let a child finish more than one new step, so all kills land before the job is done.
        cap = before + 2
        aim_at_write = i % 2 == 0
        target = before + rng.choice((1, 2)) if aim_at_write else cap
        delay = rng.uniform(0.0, 0.08) if aim_at_write else rng.uniform(0.0, 3.0)
        proc = ctx.Process(target=_child.run_job, args=(str(job), str(log), FSYNC_DELAY))
        started = time.monotonic()
        proc.start()
        while proc.is_alive():
            if _temp_folders(root, target, stale) or _temp_folders(root, cap, stale):
                if aim_at_write:
                    time.sleep(delay)
                break
            if not aim_at_write and time.monotonic() - started >= delay:
                break
            time.sleep(0.002)
        proc.kill()
        proc.join(30)
        assert proc.exitcode == -9, f"kill {i}: child exited by itself ({proc.exitcode}):\n{log.read_text()[-3000:]}"
        if _temp_folders(root, target, stale) or _temp_folders(root, cap, stale):
            mid_write += 1
        _check_after_kill(run)
    after_kills = _complete_steps(root)
    assert after_kills < STEPS

    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    if after_kills:
        assert f"resuming from step-{after_kills:08d}" in result.output
    assert status(run)["state"] == "succeeded"
    assert [r["step"] for r in metric_records(run)] == list(range(1, STEPS + 1))
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    got = final_weights(run)
    assert_same_weights(got, reference_final)
    assert mid_write >= 3, f"only {mid_write} of {KILLS} kills landed inside a checkpoint write"
    print(f"{KILLS} kills ({mid_write} inside a checkpoint write), {after_kills} steps done by then, "
          f"{time.monotonic() - t0:.1f}s; max |diff| vs straight run {max_abs_diff(got, reference_final):.2e}")


def _tiny_training_state() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _dies_half_way(path: object, *args: object, **kwargs: object) -> None:
    """A stand-in for ``artifact.remove_tree`` killed after deleting the first file (of a folder that exists)."""
    if not Path(str(path)).exists():
        return
    next(p for p in Path(str(path)).iterdir() if p.name != "state.json").unlink()
    raise SystemExit(-9)


@pytest.mark.parametrize("case", ["prune old", "rewrite same step"])
def test_a_kill_while_a_checkpoint_is_deleted_never_leaves_a_half_one(tmp_path: Path, case: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic version of the window the kill loop can only hit by chance: deleting a checkpoint."""
    model, optimizer, scheduler = _tiny_training_state()
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(root, step, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=2)
    step = 3 if case == "prune old" else 2
    with monkeypatch.context() as m, pytest.raises(SystemExit):
        m.setattr(ckpt_mod.artifact, "remove_tree", _dies_half_way)
        save_checkpoint(root, step, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=2)
    names = [p.name for p in list_checkpoints(root)]
    assert names == (["step-00000002", "step-00000003"] if case == "prune old" else ["step-00000001", "step-00000002"])
    for ckpt in list_checkpoints(root):
        assert load_file(str(ckpt / "trainable.safetensors")) and (ckpt / "optimizer.pt").exists()
    clean_partial(root)
    assert sorted(p.name for p in root.iterdir()) == names

"""SIGTERM / SIGINT during training (issue 7): the real console script checkpoints at the next step boundary,
marks the run ``interrupted`` and exits 130; rerunning the job resumes and ends with the same weights as an
uninterrupted run (CPU float32, within 1e-5)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tests.reliability._jobs import (
    STEPS,
    assert_same_weights,
    checkpoint_dirs,
    final_weights,
    max_abs_diff,
    metric_records,
    run_cli,
    status,
    write_job,
)

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"
ROOT = Path(__file__).resolve().parents[2]
AUDIT = ROOT / "tests" / "distributed" / "audit"


def _wait_for(run: Path, proc: subprocess.Popen, ready: Callable[[dict], bool], what: str,
              timeout: float = 240.0) -> dict:
    """Poll status.json (written atomically, so never half a file) until ``ready(status)``; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hdpo-tune exited early with {proc.returncode}"
        try:
            st = json.loads((run / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            st = {}
        if ready(st):
            return st
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach {what} in {timeout:.0f}s")


def _wait_for_step(run: Path, proc: subprocess.Popen, min_step: int) -> int:
    st = _wait_for(run, proc, lambda st: st.get("stage") == "train" and (st.get("step") or 0) >= min_step,
                   f"training step {min_step}")
    return int(st["step"])


def test_sigterm_and_sigint_checkpoint_mark_interrupted_and_resume_exactly(
        tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path, reference_final: dict[str, torch.Tensor]) -> None:
    # Both signals at once, in two processes: the interpreter start-up (torch, transformers) dominates.
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        folder = tmp_path / sig.name
        job = write_job(folder, tiny_model_dir, tiny_pairs, save_every=100)  # only the signal writes a checkpoint
        cwd = folder / "cwd"
        cwd.mkdir()
        log = (folder / "out.log").open("w")
        proc = subprocess.Popen([str(HDPO_TUNE), "run", str(job)], cwd=cwd, stdout=log, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        procs[sig] = (folder, job, proc, log)
    for sig, (folder, _, proc, _) in procs.items():
        seen = _wait_for_step(folder / "run", proc, 1)
        proc.send_signal(sig)
        procs[sig] = (*procs[sig], seen)

    for sig, (folder, job, proc, log, seen) in procs.items():
        _, err = proc.communicate(timeout=120)
        log.close()
        run = folder / "run"
        assert proc.returncode == 130, err[-2000:]
        last = re.findall(r"error: [^\r\n]*", err)  # tqdm's bar may precede it on the same line
        assert len(last) == 1 and f"stopped by signal {int(sig)} after step" in last[0], err[-2000:]
        assert "Traceback" not in err
        st = status(run)
        assert st["state"] == "interrupted" and st["stage"] == "train", st
        stopped = int(last[0].split("after step ")[1].split(";")[0])
        assert seen <= stopped < STEPS  # the step that was running when the signal came, then it stopped
        # exactly the signal's checkpoint (save_every is 100), complete and loadable
        assert checkpoint_dirs(run) == [f"step-{stopped:08d}"]
        ckpt = run / "checkpoints" / f"step-{stopped:08d}"
        assert json.loads((ckpt / "state.json").read_text())["step"] == stopped
        assert not (run / "final").exists()
        assert list((folder / "cwd").iterdir()) == []  # nothing written to the working folder

        result = run_cli("run", str(job))
        assert result.exit_code == 0, result.output
        assert f"resuming from step-{stopped:08d} (step {stopped})" in result.output
        assert status(run)["state"] == "succeeded"
        assert [r["step"] for r in metric_records(run)] == list(range(1, STEPS + 1))
        got = final_weights(run)
        assert_same_weights(got, reference_final)
        print(f"{sig.name}: stopped after step {stopped}, resumed; max |diff| vs straight run "
              f"{max_abs_diff(got, reference_final):.2e}")


def test_signal_outside_training_marks_the_stage_interrupted(tmp_path: Path, tiny_model_dir: Path,
                                                             tiny_pairs: Path) -> None:
    """SIGTERM (docker stop, Kubernetes) or SIGINT during a later stage: status ``interrupted`` naming the stage,
    exit 130, one line; the rerun skips the finished train stage and completes the rest."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"Q: {a}+1=", "answer": f"#### {a + 1}"}) + "\n"
                             for a in range(8)))
    light_eval = {"eval": {"tasks": str(tasks), "n_samples": 2, "max_new_tokens": 8, "temperatures": [1.0]}}
    # the launched runs stall at the start of the eval stage (test hook), so the signal always lands inside it
    hook = {"PYTHONPATH": os.pathsep.join([str(AUDIT), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "HDPO_STALL_IN_STAGE": "eval"}
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        folder = tmp_path / sig.name
        job = write_job(folder, tiny_model_dir, tiny_pairs, steps=2, extra=light_eval)
        proc = subprocess.Popen([str(HDPO_TUNE), "run", str(job)], cwd=folder, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **hook})
        procs[sig] = (folder, job, proc)
    for sig, (folder, _, proc) in procs.items():
        _wait_for(folder / "run", proc, lambda st: st.get("stage") == "eval", "the eval stage")
        proc.send_signal(sig)
    for sig, (folder, _job, proc) in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        errors = re.findall(r"error: [^\r\n]*", err)
        assert errors == [f"error: stopped by signal {int(sig)} during the eval stage; rerun the same command to "
                          "continue (finished stages are skipped)"], err[-2000:]
        assert "Traceback" not in err
        # a log, not a terminal: no carriage-return bars (transformers' "Loading weights", tqdm), plain lines
        assert "\r" not in err and "Loading weights" not in err and "train step 2/2 (100%)" in err, err[-2000:]
        st = status(folder / "run")
        assert st["state"] == "interrupted" and st["stage"] == "eval" and st["stages_done"] == ["train"], st
        assert not (folder / "run" / "eval" / "results.json").exists()
    folder, job, _ = procs[signal.SIGTERM]
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    assert "train: already done" in result.stderr
    assert status(folder / "run")["state"] == "succeeded"
    assert (folder / "run" / "eval" / "results.json").is_file()

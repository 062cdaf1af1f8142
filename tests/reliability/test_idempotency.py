"""Idempotent stages (issue 7): rerunning a finished job retrains nothing and touches no result; ``--force``
starts the training over in the same folder (it never resumes from the checkpoint of the run it replaces)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.reliability._jobs import final_weights, metric_records, run_cli, snapshot, status, write_job


def test_rerun_is_a_no_op_and_force_retrains_from_scratch(tmp_path: Path, tiny_model_dir: Path,
                                                          tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=2, save_every=1)
    run = tmp_path / "run"
    assert run_cli("run", str(job)).exit_code == 0
    first = final_weights(run)
    results = {k: v for k, v in snapshot(run).items() if k.startswith(("final", "checkpoints", "metrics.jsonl",
                                                                       "tensorboard", "data_info.json"))}
    assert "metrics.jsonl" in results and "final/adapter_model.safetensors" in results

    again = run_cli("run", str(job))
    assert again.exit_code == 0, again.output
    assert "train: already done" in again.output and "resuming" not in again.output
    now = snapshot(run)
    assert {k: now.get(k) for k in results} == results  # same files, same sizes, same mtimes
    assert status(run)["state"] == "succeeded"

    # --force on the same job: trained again from step 0 (same seed, so the same weights)
    forced = run_cli("run", "--force", str(job))
    assert forced.exit_code == 0, forced.output
    assert "already done" not in forced.output and "resuming" not in forced.output, forced.output
    redone = snapshot(run)
    assert redone["final/adapter_model.safetensors"] != results["final/adapter_model.safetensors"]
    assert redone["metrics.jsonl"] != results["metrics.jsonl"]
    assert [r["step"] for r in metric_records(run)] == [1, 2]
    assert all(torch.allclose(final_weights(run)[k], first[k], atol=1e-6, rtol=0) for k in first)

    # a changed job (beta) is refused in this folder; --force starts over with the new settings
    changed = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=2, save_every=1, name="job2.yaml",
                        extra={"hdpo": {"beta": 0.5}})
    refused = run_cli("run", str(changed))
    assert refused.exit_code == 2 and "already holds a different job's run" in refused.stderr, refused.output
    old_loss = metric_records(run)[0]["loss"]
    over = run_cli("run", "--force", str(changed))
    assert over.exit_code == 0, over.output
    assert "resuming" not in over.output, over.output
    records = metric_records(run)
    assert [r["step"] for r in records] == [1, 2] and abs(records[0]["loss"] - old_loss) > 1e-4
    assert any(not torch.allclose(final_weights(run)[k], first[k], atol=1e-6) for k in first)

"""`hdpo-tune run` end to end on a tiny Llama built in the test: LoRA and full fine-tuning, the run folder."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from service.cli import app

METRIC_KEYS = {"step", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected", "entropy", "learning_rate", "grad_norm", "tokens_per_s",
               "peak_memory_mb", "alpha"}


def write_job(tmp: Path, model: Path, pairs: Path, *, lora: bool, steps: int = 3, **train) -> Path:
    spec = {
        "model": {"name_or_path": str(model)},
        "data": {"train": str(pairs), "eval": str(pairs), "max_length": 64},
        "hdpo": {"alpha": 0.9, "beta": 0.1},
        "train": {"max_steps": steps, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 1e-3,
                  "save_every": 2, "eval_every": 2, "seed": 0, **train},
        "output": {"dir": str(tmp / "run")},
    }
    if lora:
        spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    path = tmp / "job.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("lora", [True, False])
def test_run_writes_the_whole_run_folder(tmp_path, tiny_model_dir, tiny_pairs, lora):
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, lora=lora)
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    # stderr is not a terminal here: progress comes as plain lines (first step, every 30 s, last step)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("train step ")]
    # the first and the last step always; a line between them only if a step took over 30 s (a loaded machine)
    steps = [ln.split(" (")[0] for ln in lines]
    assert steps[0] == "train step 1/3" and steps[-1] == "train step 3/3", result.stderr
    assert steps == sorted(set(steps)) and len(steps) <= 3, result.stderr
    assert " loss " in lines[-1] and " tok/s " in lines[-1] and lines[-1].endswith("eta 0m00s")
    run = tmp_path / "run"
    for name in ("job.resolved.yaml", "metrics.jsonl", "status.json", "versions.json", "final"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and "train" in status["stages_done"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert METRIC_KEYS <= set(r), METRIC_KEYS - set(r)
        assert all(torch.isfinite(torch.tensor(float(r[k]))) for k in METRIC_KEYS)
    assert "eval/loss" in records[1] and "eval/rewards/accuracies" in records[1]
    final = run / "final"
    assert (final / "tokenizer.json").exists() or (final / "tokenizer_config.json").exists()
    if lora:
        assert (final / "adapter_config.json").exists()
        weights = load_file(str(final / "adapter_model.safetensors"))
        assert weights and all("lora_" in k for k in weights)
    else:
        assert (final / "config.json").exists() and (final / "model.safetensors").exists()
        gen = json.loads((final / "generation_config.json").read_text())
        assert gen["eos_token_id"] is not None and gen["pad_token_id"] is not None
        base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
        new = load_file(str(final / "model.safetensors"))
        assert any(not torch.equal(base[k], new[k]) for k in base)
    resolved = yaml.safe_load((run / "job.resolved.yaml").read_text())
    assert resolved["hdpo"] == {**resolved["hdpo"], "alpha": 0.9, "beta": 0.1}


def test_rerun_of_a_finished_job_does_not_retrain(tmp_path, tiny_model_dir, tiny_pairs):
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, lora=True, steps=2)
    assert run_cli("run", str(job)).exit_code == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = run_cli("run", str(job))
    assert again.exit_code == 0
    assert "train: already done" in again.output
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_resumed_pipeline_run_equals_straight_run(tmp_path, tiny_model_dir, tiny_pairs):
    """4 steps straight == 2 steps (job with max_steps 2 finishes) then the job extended to 4 resumes."""
    straight = write_job(tmp_path / "a", tiny_model_dir, tiny_pairs, lora=True, steps=4, save_every=2,
                         scheduler="constant")
    assert run_cli("run", str(straight)).exit_code == 0
    first = write_job(tmp_path / "b", tiny_model_dir, tiny_pairs, lora=True, steps=4, save_every=2,
                      scheduler="constant")
    from hdpo_core.metrics_log import MetricsLog

    calls = []
    orig = MetricsLog.write

    def crash_after_two(self, m):
        orig(self, m)
        calls.append(m["step"])
        if m["step"] == 3:
            raise KeyboardInterrupt

    MetricsLog.write = crash_after_two
    try:
        res = CliRunner().invoke(app, ["run", str(first)])
    finally:
        MetricsLog.write = orig
    assert res.exit_code == 130  # Ctrl-C outside the trainer's own handler: still "interrupted", not "failed"
    assert json.loads((tmp_path / "b" / "run" / "status.json").read_text())["state"] == "interrupted"
    assert run_cli("run", str(first)).exit_code == 0
    a = [json.loads(x)["loss"] for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(b) == 4
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), atol=1e-5, rtol=0)


def test_conversational_data_trains(tmp_path, tiny_model_dir, tiny_conv_pairs):
    job = write_job(tmp_path, tiny_model_dir, tiny_conv_pairs, lora=True, steps=1)
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "data_info.json").read_text())
    assert info["train"]["format"] == "conversational" and info["train"]["pairs"] == 16

"""`hdpo-tune sweep`: three alphas on a tiny model, shared reference cache, winner by a named metric."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app
from service.sweep import Metric, parse_metric


def test_sweep_runs_variants_reuses_reference_logps_and_picks_the_best(tmp_path, tiny_model_dir, tiny_pairs):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                             for i in range(3)))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model_dir)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(tiny_pairs), "eval": str(tiny_pairs), "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 8, "micro_batch_size": 8, "learning_rate": 1e-2},
        "eval": {"tasks": str(tasks), "n_samples": 2, "temperatures": [1.0], "max_new_tokens": 4,
                 "compare_reference": False},
        "output": {"dir": str(tmp_path / "run")},
    }))
    result = CliRunner().invoke(app, ["sweep", str(job), "--alpha", "0.8,1.0,1.2", "--select", "loss"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    root = tmp_path / "run" / "sweep"
    hits = [json.loads((root / f"alpha-{a}" / "data_info.json").read_text())["ref_cache"]["hit"]
            for a in ("0.8", "1", "1.2")]
    assert hits == [False, True, True]  # the reference ran once, for the first variant
    report = json.loads((root / "sweep.json").read_text())
    losses = {a: json.loads((root / f"alpha-{a}" / "eval" / "results.json").read_text())["headline"]["loss"]
              for a in ("0.8", "1", "1.2")}
    best = min(losses, key=losses.get)
    assert f"{report['winner']:g}" == best
    assert (root / "sweep.md").exists() and (root / "compare.png").exists()
    for a in (0.8, 1.0, 1.2):
        resolved = yaml.safe_load((root / f"alpha-{a:g}" / "job.resolved.yaml").read_text())
        assert resolved["hdpo"]["alpha"] == a


def test_metric_parsing_and_errors():
    assert parse_metric("pass@8") == Metric("pass", k=8, temperature=1.0)
    assert parse_metric("accuracy@t0.5") == Metric("accuracy", temperature=0.5)
    assert parse_metric("entropy~0.4").score({"headline": {"entropy_chosen": {"policy": 0.5}}}) == pytest.approx(-0.1)
    result = CliRunner().invoke(app, ["sweep", "job.yaml", "--alpha", "0.8", "--select", "loss"])
    assert result.exit_code == 2 and "--alpha" in result.output
    result = CliRunner().invoke(app, ["sweep", "job.yaml", "--alpha", "0.8,0.9", "--select", "bogus"])
    assert result.exit_code == 2 and "unknown metric" in result.output

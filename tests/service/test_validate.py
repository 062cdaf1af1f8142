"""`hdpo-tune validate | schema | init` through the real CLI (typer's CliRunner), on a tiny model built offline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app
from service.spec.job import load_spec
from service.validate.job import validate_job

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def make_job(folder: Path, model: Path, pairs: Path, **sections: dict) -> Path:
    spec = {"model": {"name_or_path": str(model)}, "data": {"train": str(pairs), "max_length": 64},
            "train": {"max_steps": 3}, "output": {"dir": "./run"}, "lora": {"r": 4}}
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


def test_validate_ok_prints_a_summary_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path,
                                                         tiny_pairs: Path) -> None:
    job = make_job(tmp_path, tiny_model_dir, tiny_pairs)
    before = snapshot(tmp_path), snapshot(tiny_model_dir)
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    assert f"{job}: OK" in result.output
    assert f"data.train: 16 pairs (standard) in {tiny_pairs}" in result.output
    assert "model: " in result.output and "(llama, dtype float32)" in result.output
    assert "parameters in 1 safetensors file(s)" in result.output
    assert f"output.dir: {tmp_path / 'run'} (new run)" in result.output
    assert (snapshot(tmp_path), snapshot(tiny_model_dir)) == before
    assert not (tmp_path / "run").exists()


def test_validate_conversational_data_with_chat_template(tmp_path: Path, tiny_model_dir: Path,
                                                         tiny_conv_pairs: Path) -> None:
    assert validate_job(make_job(tmp_path, tiny_model_dir, tiny_conv_pairs)) == []


def test_validate_counts_tokens_drops_and_truncations(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = make_job(tmp_path, tiny_model_dir, tiny_pairs, data={"max_length": 14, "overlong": "truncate"})
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 2
    assert f"{tiny_pairs}:9: prompt alone is 16 tokens, leaving no room" in result.output
    assert f"{tiny_pairs}:3: chosen and rejected are identical after truncation to max_length=14" in result.output
    job = make_job(tmp_path, tiny_model_dir, tiny_pairs, data={"max_length": 14, "on_bad_row": "skip"})
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    assert "data.train: 4 rows that cannot be tokenized will be skipped (data.on_bad_row: skip)" in result.output
    assert "; 10 truncated" in result.output and "longest sequence 14 (max_length 14)" in result.output
    job = make_job(tmp_path, tiny_model_dir, tiny_pairs, data={"max_length": 14, "overlong": "drop"})
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    assert "; 14 dropped as overlong" in result.output


def test_validate_lists_every_mistake_exits_2_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The issue's acceptance test: several mistakes in spec, model and data, each reported with its field."""
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": " a", "rejected": " b"}\n{"prompt": "Hi", "chosen": " a"}\n'
                    '{"prompt": "Yo", "chosen": " same", "rejected": " same"}\n')
    job = tmp_path / "job.yaml"
    job.write_text(f"""
model: {{name_or_path: {tiny_model_dir}, dtype: float64}}
data: {{train: ./prefs.jsonl, eval: ./missing_eval.jsonl}}
hdpo: {{beta: 0, alpha: -1}}
train: {{batch_size: 10, micro_batch_size: 4, learning_rte: 1.0e-6}}
output: {{dir: ./runs/exp1}}
""")
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [ln.strip() for ln in result.output.splitlines()[1:]]
    assert result.output.splitlines()[0] == f"{job}: {len(lines)} problems:"
    expected_starts = [
        "model.dtype: invalid choice (got 'float64')",
        "hdpo.alpha: must be greater than 0.0 (got -1)",
        "hdpo.beta: must be greater than 0.0 (got 0)",
        "train.learning_rte: unknown field; did you mean 'learning_rate'?",
        "train.batch_size (10) must be divisible by train.micro_batch_size (4)",
        f"data.train: {data}:2: missing field 'rejected'",
        f"data.train: {data}:3: 'chosen' is identical to 'rejected'",
        f"data.eval: {tmp_path / 'missing_eval.jsonl'}: data file not found",
    ]
    assert len(lines) == len(expected_starts), lines
    for start in expected_starts:
        assert sum(ln.startswith(start) for ln in lines) == 1, (start, lines)
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


def test_validate_reports_a_resumable_run(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    from service.runfolder.ownership import claim
    from service.runfolder.record import RunDir
    from service.spec.job import spec_to_dict

    job = make_job(tmp_path, tiny_model_dir, tiny_pairs)
    claim(tmp_path / "run")
    run = RunDir(tmp_path / "run")

    run.write_resolved_spec(spec_to_dict(load_spec(job)))
    run.write_status("train", "interrupted", step=2, total_steps=3)
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output
    assert "holds this job's run (train: interrupted at step 2); running resumes it" in result.output


def test_schema_command_prints_the_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "hdpo-tune job spec"
    assert schema["$defs"]["HdpoSpec"]["properties"]["beta"]["exclusiveMinimum"] == 0


def test_init_writes_a_loadable_annotated_spec_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "job.yaml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert "# Peak AdamW learning rate.\n  learning_rate: 1.0e-06\n" in text
    assert "  mixed_precision: 'no'\n" in text and "# hub:\n" in text and "#   repo_id: null" in text
    spec = load_spec(target)
    assert spec.model.name_or_path == str(tmp_path / "base") and spec.train.max_steps == 100
    assert spec.lora is not None and spec.lora.r == 16
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 2 and "already exists; pass --force" in again.output
    target.write_text("changed")
    assert runner.invoke(app, ["init", str(target), "--force"]).exit_code == 0
    assert target.read_text() == text


def test_docs_spec_md_is_generated_from_the_schema() -> None:
    spec = importlib.util.spec_from_file_location("gen_spec_docs", ROOT / "scripts" / "gen_spec_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert "| `learning_rate` | float (> 0) | `1e-06` | Peak AdamW learning rate. |" in text
    assert (ROOT / "docs" / "spec.md").read_text(encoding="utf-8") == text, (
        "docs/spec.md is out of date: run python scripts/gen_spec_docs.py")


@pytest.mark.parametrize("offline_id", ["org/some-model", "gpt2"])
def test_hub_model_offline_is_a_clear_problem(tmp_path: Path, tiny_pairs: Path, offline_id: str) -> None:
    job = make_job(tmp_path, Path("x"), tiny_pairs)
    job.write_text(job.read_text().replace("name_or_path: x", f"name_or_path: {offline_id}"))
    problems = validate_job(job)
    assert problems == [f"model.name_or_path: '{offline_id}' is not a local folder and the Hub is offline "
                        "(HF_HUB_OFFLINE=1); download the model first and point name_or_path at the folder"]

"""`hdpo-tune validate` finds bad eval task rows (choice, ifeval) before any sampling: one line each, file:row."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_validate_lists_each_bad_task_row(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    tasks = tmp_path / "if.jsonl"
    rows = [{"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
            {"prompt": "p", "instruction_id_list": ["detectable_format:json"], "kwargs": [{}]},
            {"prompt": "p", "instruction_id_list": ["keywords:existence"], "kwargs": [{"keyword": ["x"]}]}]
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": str(tiny_pairs), "max_length": 64},
            "lora": {"r": 4}, "output": {"dir": str(tmp_path / "run")},
            "eval": {"tasks": str(tasks), "verifier": "ifeval"}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 2, result.output
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip().startswith(str(tasks))]
    assert len(lines) == 2
    assert lines[0].startswith(f"{tasks}:2: instruction_id_list[0]: unknown IFEval instruction id "
                               "'detectable_format:json'")
    assert lines[1].startswith(f"{tasks}:3: kwargs[0] for 'keywords:existence': unknown argument(s) ['keyword']")
    assert not (tmp_path / "run").exists()

    lm_tasks = Path(__file__).parent / "data" / "lm_eval"
    spec["eval"] = {"tasks": str(tasks), "verifier": "choice",
                    "lm_eval": {"tasks": ["hdpo_choice", "hdpo_choise"], "include_path": str(lm_tasks)}}
    job.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["validate", str(job)])
    assert result.exit_code == 2 and result.output.count("missing field(s) ['options', 'answer']") == 3
    assert (f"eval.lm_eval.tasks: 'hdpo_choise' is not an lm-evaluation-harness task or in {lm_tasks}; list them "
            "with `lm-eval ls tasks`") in result.output
    assert "'hdpo_choice' is not" not in result.output

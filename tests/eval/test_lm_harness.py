"""`hdpo-tune eval --lm-eval`: EleutherAI's lm-evaluation-harness on a tiny model, offline, with custom tasks on
a local file written in this repository (tests/eval/data/lm_eval). One model, one harness run; the numbers are
checked against a log-likelihood computed here."""

import json
from pathlib import Path

import pytest
import torch
from tiny import save_tiny
from typer.testing import CliRunner

from service.cli import app

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "tests/eval/data/lm_eval"
runner = CliRunner()


@pytest.fixture(scope="module")
def offline_ws(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    import datasets.config
    import huggingface_hub.constants

    mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mp.chdir(ROOT)  # the task YAMLs name their data file relative to the repository root
    root = tmp_path_factory.mktemp("lmeval")
    save_tiny(root / "model", seed=3)
    yield root
    mp.undo()


def _expected_choice_accuracy(model_dir: Path) -> float:
    """hdpo_choice's accuracy by hand: the option with the highest log-likelihood after ``question + " "``."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    hits, rows = 0, [json.loads(x) for x in (TASKS / "arith.jsonl").read_text().splitlines()]
    for row in rows:
        ctx = tok(row["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for option in row["options"]:
            cont = tok(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logps = model(torch.tensor([ctx + cont])).logits[0].log_softmax(-1)
            scores.append(sum(logps[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == row["label"])
    return hits / len(rows)


def test_lm_eval_custom_tasks_offline(offline_ws):
    out = offline_ws / "out"
    result = runner.invoke(app, ["eval", str(offline_ws / "model"), "--lm-eval", "hdpo_arith,hdpo_choice",
                                 "--lm-eval-include", str(TASKS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    harness = results["lm_eval"]
    assert harness["backend"] == "hf" and harness["n_samples"] == {"hdpo_arith": 8, "hdpo_choice": 8}
    assert harness["tasks"]["hdpo_choice"]["acc,none"] == pytest.approx(_expected_choice_accuracy(offline_ws / "model"))
    assert 0.0 <= harness["tasks"]["hdpo_arith"]["exact_match,none"] <= 1.0
    assert set(results["headline"]["lm_eval"]) == {"hdpo_arith/exact_match", "hdpo_choice/acc"}
    assert "sampling" not in results  # no task file: only lm-eval ran
    summary = (out / "summary.md").read_text()
    assert "## lm-evaluation-harness" in summary and "| hdpo_choice | acc,none |" in summary
    assert "lm-eval: hdpo_arith/exact_match" in result.output
    # the sweep can select by it, compare shows it
    from hdpo_core.eval.compare import compare_table, load_run
    from service.sweep import parse_metric

    acc = harness["tasks"]["hdpo_choice"]["acc,none"]
    assert parse_metric("lm_eval:hdpo_choice/acc").score(results) == acc
    from hdpo_core.export.modelcard import build_card

    card = build_card({"hdpo": {"alpha": 0.9, "beta": 0.1}}, base_model=None, eval_results=results, repo_id=None,
                      onnx=False)
    assert f"| hdpo_choice | acc | {acc:.4f} |" in card
    table = compare_table([load_run(out, 0.9)])
    assert "lm-eval hdpo_choice/acc" in table.splitlines()[0] and f"| {acc:.3f} |" in table.splitlines()[2]


def test_unreachable_data_and_unknown_task_are_one_line(offline_ws):
    model = str(offline_ws / "model")
    result = runner.invoke(app, ["eval", model, "--lm-eval", "hdpo_unreachable", "--lm-eval-include", str(TASKS),
                                 "--out", str(offline_ws / "o2")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: eval.lm_eval.tasks: 'hdpo_unreachable': its data cannot be loaded (")
    assert lines[-1].endswith("or point the task at a local file")
    result = runner.invoke(app, ["eval", model, "--lm-eval", "hdpo_unsafe", "--lm-eval-include", str(TASKS),
                                 "--out", str(offline_ws / "o2")])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1] == (
        "error: eval.lm_eval.tasks: 'hdpo_unsafe' runs model-written code outside any sandbox; use hdpo-tune's "
        "verifier: code (bubblewrap) for code tasks instead")
    result = runner.invoke(app, ["eval", model, "--lm-eval", "hdpo_no_such_task", "--out", str(offline_ws / "o3")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: eval.lm_eval.tasks: 'hdpo_no_such_task' is not an lm-evaluation-harness task (custom tasks: "
        "eval.lm_eval.include_path); list them with `lm-eval ls tasks`")
    assert not (offline_ws / "o2").exists() and not (offline_ws / "o3").exists()

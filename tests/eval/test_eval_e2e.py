import json
from pathlib import Path

import pytest
import torch
from tiny import save_tiny
from typer.testing import CliRunner

from hdpo_core.eval.targets import peft_reference
from service.cli import app
from service.spec.eval import EvalSpec
from service.stages.eval import run_eval_stage

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalws")
    save_tiny(root / "model", seed=0)
    save_tiny(root / "base", seed=1)
    with (root / "tasks.jsonl").open("w") as fh:
        for a in range(5):
            fh.write(json.dumps({"prompt": f"Q: {a}+1=", "answer": f"#### {a + 1}"}) + "\n")
    with (root / "pairs.jsonl").open("w") as fh:
        for a in range(4):
            fh.write(json.dumps({"prompt": f"Q: {a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)}) + "\n")
    (root / "job.yaml").write_text(
        "model: {name_or_path: base}\ndata: {train: pairs.jsonl, eval: pairs.jsonl, max_length: 64}\n"
        "hdpo: {alpha: 0.8, beta: 0.1}\neval: {tasks: tasks.jsonl, n_samples: 3, max_new_tokens: 6, "
        "temperatures: [0.5, 1.0]}\n")
    return root


def _eval(ws: Path, out: str, *extra: str):
    result = runner.invoke(app, ["eval", str(ws / "model"), "--job", str(ws / "job.yaml"), "--out", str(ws / out),
                                 "--seed", "7", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((ws / out / "results.json").read_text())


def test_cli_eval_writes_report_and_reproduces(workspace):
    a = _eval(workspace, "out_a")
    files = {p.name for p in (workspace / "out_a").iterdir()}
    assert {"results.json", "summary.md", "samples.jsonl", "sampling.png", "entropy.png"} <= files
    assert (workspace / "out_a" / "sampling.png").stat().st_size > 1000
    assert "| policy | 0.5 |" in (workspace / "out_a" / "summary.md").read_text()
    pol = a["sampling"]["policy"]
    assert set(pol) == {"0.5", "1"} and set(a["sampling"]) == {"policy", "reference"}
    assert len(pol["1"]["pass_at_k"]) == 3 and a["num_tasks"] == 5 and a["alpha"] == 0.8
    pref = a["preference"]
    assert pref["pairs"] == 4 and 0 <= pref["rewards/accuracies"] <= 1 and pref["loss"] > 0
    # H-DPO reward: alpha*beta*logp - beta*logp_ref, averaged
    assert pref["rewards/chosen"] == pytest.approx(0.8 * 0.1 * pref["logps/chosen"] - 0.1 * pref["ref_logps/chosen"],
                                                   rel=1e-5)
    head = a["headline"]
    assert set(head["entropy_chosen"]) == {"policy", "reference"}
    assert head["entropy_sampled"]["policy"] > 0 and head["entropy_sampled_temperature"] == 1.0
    b = _eval(workspace, "out_b")
    assert b["sampling"] == a["sampling"] or _same_but_speed(a["sampling"], b["sampling"])
    assert b["preference"] == a["preference"]
    _eval(workspace, "out_c", "--seed", "8")
    assert [json.loads(x)["completion"] for x in (workspace / "out_c" / "samples.jsonl").open()] != \
        [json.loads(x)["completion"] for x in (workspace / "out_a" / "samples.jsonl").open()]


def _same_but_speed(x, y) -> bool:
    strip = lambda s: {m: {t: {k: v for k, v in d.items() if k != "samples_per_s"} for t, d in per.items()}  # noqa: E731
                       for m, per in s.items()}
    return strip(x) == strip(y)


def test_cli_no_reference_skips_reference_sampling(workspace):
    a = _eval(workspace, "out_noref", "--no-reference")
    assert set(a["sampling"]) == {"policy"}
    # held-out preference metrics still need reference log-probs: they stay, the reference is not sampled
    assert a["preference"]["pairs"] == 4 and "ref_logps/chosen" in a["preference"]
    summary = (workspace / "out_noref" / "summary.md").read_text()
    assert "| policy | 0.5 |" in summary and "| reference | 0.5 |" not in summary
    # --eval-pairs replaces the job's data.eval (here a 2-pair file)
    (workspace / "pairs2.jsonl").write_text("".join(
        (workspace / "pairs.jsonl").read_text().splitlines(keepends=True)[:2]))
    b = _eval(workspace, "out_pairs2", "--no-reference", "--eval-pairs", str(workspace / "pairs2.jsonl"))
    assert b["preference"]["pairs"] == 2 and b["eval_pairs"].endswith("pairs2.jsonl")
    r = runner.invoke(app, ["eval", str(workspace / "model"), "--eval-pairs", "nope.jsonl", "--out",
                            str(workspace / "x")])
    assert r.exit_code == 2 and "--eval-pairs: nope.jsonl: file not found (relative to the current folder" in r.output
    assert "Traceback" not in r.output


def test_cli_errors_are_one_line(workspace):
    r = runner.invoke(app, ["eval", str(workspace / "nope")])
    assert r.exit_code == 2 and "eval target not found" in r.output
    r = runner.invoke(app, ["eval", str(workspace / "model"), "--tasks", str(workspace / "tasks.jsonl"),
                            "--temperatures", "hot", "--out", str(workspace / "x")])
    assert r.exit_code == 2 and "--temperatures" in r.output
    r = runner.invoke(app, ["eval", str(workspace / "model"), "--tasks", str(workspace / "pairs.jsonl"),
                            "--out", str(workspace / "x")])
    assert r.exit_code == 2 and "pairs.jsonl:1: missing field(s) ['answer']" in r.output


def test_lora_reference_is_adapter_disabled_and_compare(workspace, tmp_path):
    import peft
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(str(workspace / "model"))
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run = tmp_path / "run"
    lora.save_pretrained(run / "final")
    cfg = json.loads((run / "final" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(workspace / "model")
    (run / "final" / "adapter_config.json").write_text(json.dumps(cfg))
    (run / "job.resolved.yaml").write_text("hdpo: {alpha: 1.2, beta: 0.1}\n")
    spec = EvalSpec(tasks=str(workspace / "tasks.jsonl"), n_samples=2, max_new_tokens=4, temperatures=[1.0])
    res = run_eval_stage(run, spec, model_dir=run / "final", reference_dir=None, alpha=1.2, beta=0.1,
                         eval_pairs_path=str(workspace / "pairs.jsonl"), max_length=64)
    assert (run / "eval" / "results.json").is_file()
    # the reference (adapter off) is the base model: compare with evaluating the base folder itself
    base_res = run_eval_stage(tmp_path / "base_eval", spec, model_dir=workspace / "model", reference_dir=None,
                              alpha=1.2, beta=0.1, eval_pairs_path=str(workspace / "pairs.jsonl"), max_length=64)
    assert res["preference"]["ref_logps/chosen"] == pytest.approx(base_res["preference"]["logps/chosen"], rel=1e-5)
    assert res["preference"]["logps/chosen"] != pytest.approx(base_res["preference"]["logps/chosen"], rel=1e-3)
    # Sampling is compared through what must really be equal, the logits it samples from: an exact sampled
    # outcome depends on float rounding that differs between processors and thread counts.
    ref_side = peft_reference(lora)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21], [2, 4, 6, 8, 10, 12]])
    with torch.no_grad(), ref_side.active():
        ref_logits = lora(input_ids=ids).logits
    with torch.no_grad():
        base_logits = transformers.AutoModelForCausalLM.from_pretrained(str(workspace / "model"))(input_ids=ids).logits
        lora_logits = lora(input_ids=ids).logits
    torch.testing.assert_close(ref_logits, base_logits, atol=1e-4, rtol=1e-4)
    assert (lora_logits - base_logits).abs().max() > 1e-2  # the adapter is really switched off, not absent
    ref_s, base_s = res["sampling"]["reference"], base_res["sampling"]["policy"]
    assert set(ref_s) == set(base_s) and all(len(ref_s[t]["pass_at_k"]) == len(base_s[t]["pass_at_k"])
                                             for t in ref_s)
    r = runner.invoke(app, ["compare", str(run), str(tmp_path / "base_eval"), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| run | alpha |" in md and "| run | 1.200 |" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000


def test_eval_spec_is_strict():
    assert EvalSpec().temperatures == [0.25, 0.5, 1.0]
    for bad in ({"n_samples": 0}, {"temperatures": [-1.0]}, {"temperatures": []}, {"verifier": "bleu"},
                {"top_p": 1.5}, {"unknown": 1}):
        with pytest.raises(ValueError):
            EvalSpec.model_validate(bad)
    assert all(f.description for f in EvalSpec.model_fields.values())

"""Starting from an SFT LoRA adapter (model.name_or_path = a peft adapter folder): the adapter is merged into
its base once (RUN/start_model), and the reference is the SFT model, not the raw base (TRL issue #1340)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from service.cli import app
from service.spec.eval import EvalSpec
from service.stages.eval import run_eval_stage
from tests.e2e.test_run import write_job


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A LoRA adapter on the tiny model with non-zero weights (it changes the model), no tokenizer files."""
    import peft
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(5)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj",
                                                                                            "down_proj"],
                                                      init_lora_weights=False))
    out = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    return out


def _pref(run_dir: Path, model_dir: Path, pairs: Path) -> dict:
    spec = EvalSpec(eval_pairs=str(pairs), compare_reference=False)
    return run_eval_stage(run_dir, spec, model_dir=model_dir, reference_dir=None, alpha=0.9, beta=0.1,
                          eval_pairs_path=None, max_length=64)["preference"]


@pytest.mark.parametrize("lora", [True, False])
def test_training_starts_from_the_sft_adapter(tmp_path, tiny_model_dir, tiny_pairs, sft_adapter, lora):
    job = write_job(tmp_path, sft_adapter, tiny_pairs, lora=lora, steps=2)
    validate = CliRunner().invoke(app, ["validate", str(job)])
    assert validate.exit_code == 0, validate.output
    assert f"peft adapter {sft_adapter} on base {tiny_model_dir}" in validate.output
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 0, result.output
    assert f"model: merging the adapter {sft_adapter} into its base {tiny_model_dir}" in result.stderr
    run = tmp_path / "run"
    start = run / "start_model"
    assert json.loads((start / "merge.json").read_text())["base_model"] == tiny_model_dir.name  # no machine path
    # the reference of the trained model is the SFT model: its held-out log-probs equal those of the SFT
    # adapter evaluated as a policy, and differ from the raw base's
    sft = _pref(tmp_path / "e_sft", sft_adapter, tiny_pairs)
    base = _pref(tmp_path / "e_base", tiny_model_dir, tiny_pairs)
    merged_start = _pref(tmp_path / "e_start", start, tiny_pairs)
    assert merged_start["logps/chosen"] == pytest.approx(sft["logps/chosen"], rel=1e-5)
    assert base["logps/chosen"] != pytest.approx(sft["logps/chosen"], rel=1e-3)
    if lora:  # reference = the final adapter switched off = the merged SFT model
        trained = _pref(tmp_path / "e_run", run / "final", tiny_pairs)
        assert trained["ref_logps/chosen"] == pytest.approx(sft["logps/chosen"], rel=1e-5)
        cfg = json.loads((run / "final" / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(start)
        # merging puts the DPO adapter on the merged SFT model; the card names the original base
        from service.stages.ship import merge_run

        assert merge_run(run, log=lambda _: None)["base_model"] == "start_model"  # relative to the run folder
        card = (run / "merged" / "README.md").read_text()
        assert f"a local model (`{tiny_model_dir.name}`)" in card and "start_model" not in card
    # a second run does not merge again
    again = CliRunner().invoke(app, ["run", str(job), "--force"])
    assert again.exit_code == 0, again.output
    assert "merging the adapter" not in again.stderr


def test_adapter_without_base_is_one_clear_error(tmp_path, tiny_pairs, sft_adapter):
    import shutil

    bad = tmp_path / "adapter"
    shutil.copytree(sft_adapter, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    job = write_job(tmp_path, bad, tiny_pairs, lora=False, steps=1)
    for cmd in ("validate", "run"):
        r = CliRunner().invoke(app, [cmd, str(job)])
        assert r.exit_code == 2, r.output
        assert f"{bad}/adapter_config.json names no base model (base_model_name_or_path)" in r.output
        assert "Traceback" not in r.output

"""Merge stage: merged == base+adapter logits, idempotent, NaN refused, full-FT copy, card + provenance."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hdpo_core.artifact import write_manifest
from hdpo_core.errors import InputError, RunError
from service.stages.ship import merge_run
from tests.export.conftest import write_spec


def _logits(model, tok, texts):
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits, batch["attention_mask"].bool()


def test_lora_merge_matches_adapter_logits(llama_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = merge_run(llama_run, log=lambda _: None)
    merged_dir = llama_run / "merged"
    assert info["kind"] == "lora" and not info["skipped"] and info["max_abs_logit_diff"] <= 1e-4
    for name in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "README.md",
        "provenance.json",
        "merge.json",
    ):
        assert (merged_dir / name).exists(), name
    gen = json.loads((merged_dir / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(merged_dir)
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id

    # independent check: a fresh base+adapter vs the saved merged folder, on texts the merge did not use
    base_dir = json.loads((llama_run / "final" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), str(llama_run / "final")
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    texts = ["Hello, how are you?", "The waves are blue"]
    a, mask = _logits(adapter, tok, texts)
    m, _ = _logits(merged, tok, texts)
    b, _ = _logits(base, tok, texts)
    assert (a - m).abs()[mask].max() < 1e-4
    assert (a - b).abs()[mask].max() > 1e-2  # the adapter really changes the model
    assert not any("lora" in k for k in load_file(merged_dir / "model.safetensors"))


def test_second_merge_is_a_noop_and_force_redoes(llama_run):
    merge_run(llama_run, log=lambda _: None)
    weights = llama_run / "merged" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    said: list[str] = []
    info = merge_run(llama_run, log=said.append)
    assert info["skipped"] and "already up to date" in said[0] and "nothing to do" in said[0]
    assert weights.stat().st_mtime_ns == before
    info = merge_run(llama_run, force=True, log=said.append)
    assert not info["skipped"] and weights.stat().st_mtime_ns != before


def test_merge_saves_requested_dtype(llama_run):
    write_spec(llama_run, merge={"dtype": "bfloat16"})
    info = merge_run(llama_run, log=lambda _: None)
    assert info["dtype"] == "bfloat16"
    with safe_open(llama_run / "merged" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_nan_adapter_is_refused(llama_run):
    path = llama_run / "final" / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, path)
    write_manifest(path.parent)  # a training that published NaN weights: whole, but broken
    with pytest.raises(RunError, match="refused.*NaN|NaN"):
        merge_run(llama_run, log=lambda _: None)
    assert not (llama_run / "merged").exists()


def test_full_finetune_is_copied_with_card(gpt2_run):
    info = merge_run(gpt2_run, log=lambda _: None)
    assert info["kind"] == "full" and info["max_abs_logit_diff"] is None
    assert (gpt2_run / "merged" / "model.safetensors").exists()
    assert "hdpo" in (gpt2_run / "merged" / "README.md").read_text()
    assert merge_run(gpt2_run, log=lambda _: None)["skipped"]


def test_card_and_provenance(llama_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_PLANTEDsecret123")
    write_spec(llama_run)
    (llama_run / "data_info.json").write_text(json.dumps({"train": {"fingerprint": "sha256:abc123"}}))
    (llama_run / "eval").mkdir()
    (llama_run / "eval" / "results.json").write_text(json.dumps({"entropy": 1.23, "accuracy": 0.75}))
    merge_run(llama_run, log=lambda _: None)
    card = (llama_run / "merged" / "README.md").read_text()
    assert card.startswith("---\n") and "- hdpo" in card and "- dpo" in card
    # the base is a local folder: named in the text, kept out of the metadata (the Hub rejects local paths there)
    assert "base_model:" not in card.split("---")[1] and "a local model (`" in card
    assert "alpha = **0.9**" in card and "beta = **0.1**" in card
    assert "| eval.entropy | 1.23 |" in card and "org/tiny-prefs" in card and "onnxruntime" in card
    prov = json.loads((llama_run / "merged" / "provenance.json").read_text())
    assert prov["data_fingerprints"] == {"data.train.fingerprint": "sha256:abc123"}
    assert prov["packages"]["torch"].startswith("2.")
    for f in (llama_run / "merged").rglob("*"):
        if f.is_file():
            assert b"PLANTEDsecret" not in f.read_bytes(), f


def test_bad_merge_section_is_input_error(llama_run):
    write_spec(llama_run, merge={"dtype": "int4"})
    with pytest.raises(InputError, match=r"merge\.dtype"):
        merge_run(llama_run, log=lambda _: None)


def test_ship_spec_sections_are_strict():
    from pydantic import ValidationError

    from service.spec.ship import ExportSpec, HubSpec, MergeSpec

    assert MergeSpec().tolerance == 1e-4 and ExportSpec().onnx.atol == 1e-4 and HubSpec().private is True
    with pytest.raises(ValidationError, match="repo_id"):
        HubSpec(repo_id="not a repo")
    with pytest.raises(ValidationError, match="Extra inputs"):
        HubSpec(repo_id="me/x", token="hf_x")  # a token in the spec is refused
    with pytest.raises(ValidationError, match="decode_steps"):
        ExportSpec.model_validate({"onnx": {"decode_steps": 2}})


def test_cli_merge_twice_says_noop_and_missing_run_is_exit_2(llama_run, tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["merge", str(llama_run)])
    assert first.exit_code == 0 and "merged LoRA" in first.output
    second = runner.invoke(app, ["merge", str(llama_run)])
    assert second.exit_code == 0 and "nothing to do" in second.output
    missing = runner.invoke(app, ["merge", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "job.resolved.yaml not found" in missing.output


def test_card_metadata_takes_hub_ids_only():
    from hdpo_core.export.modelcard import build_card, hub_model_id

    assert hub_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B" and hub_model_id("gpt2") == "gpt2"
    for local in ("/abs/path/model", "./base", "../m", "~/models/x", "a/b/c", None, ""):
        assert hub_model_id(local) is None, local
    card = build_card({"hdpo": {"alpha": 0.9, "beta": 0.1}}, base_model="Qwen/Qwen2.5-0.5B", eval_results=None,
                      repo_id="me/aligned", onnx=False)
    assert "base_model: Qwen/Qwen2.5-0.5B" in card.split("---")[1]
    assert "[`Qwen/Qwen2.5-0.5B`](https://huggingface.co/Qwen/Qwen2.5-0.5B)" in card


"""ONNX export + onnxruntime validation on a tiny Llama (LoRA-merged) and a tiny GPT-2 (full FT)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hdpo_core.artifact import MANIFEST, write_manifest
from hdpo_core.errors import RunError
from hdpo_core.export import ort_generate
from hdpo_core.export.onnx_validate import validate_export
from service.stages.ship import export_run
from tests.export.conftest import copy_run, write_spec

REPO = Path(__file__).resolve().parents[2]
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def llama_exported(llama_lora_template, tmp_path_factory) -> Path:
    run = copy_run(llama_lora_template, tmp_path_factory.mktemp("llama_onnx") / "run")
    export_run(run, **QUIET)
    return run


def reuse_exported_graph(monkeypatch: pytest.MonkeyPatch, exported: Path) -> None:
    """Make the export stage take the float32 graph of ``exported`` (a run exported by ``export_run``) instead
    of tracing the model again: what :func:`export_decoder` writes, at a copy's cost. Only for runs whose merged
    weights are the ones that graph was exported from, or that a test changed on purpose after it was made."""
    import hdpo_core.export.onnx_export as onnx_export

    def copy_graph(model_dir: Path, out_dir: Path, opset: int | None = None) -> dict:
        # the stage's own files (report, manifest, genai config) are the stage's to write again
        stage_files = shutil.ignore_patterns(MANIFEST, "validation.json", "genai_config.json")
        shutil.copytree(exported / "onnx", out_dir, dirs_exist_ok=True, ignore=stage_files)
        return json.loads((out_dir / "hdpo_onnx.json").read_text())

    monkeypatch.setattr(onnx_export, "export_decoder", copy_graph)


def _check_report(run: Path) -> dict:
    report = json.loads((run / "onnx" / "validation.json").read_text())
    assert report["passed"] and report["failures"] == []
    assert report["max_abs_logit_diff"] <= report["atol"] == 1e-4
    assert len(report["max_abs_logit_diff_per_step"]) == 1 + 3  # prefill + 3 decode steps
    assert report["greedy_identical"] and report["greedy_tokens"] == 32 and report["top1_agreement"] == 1.0
    return report


def test_llama_export_passes_parity(llama_exported):
    report = _check_report(llama_exported)
    onnx_dir = llama_exported / "onnx"
    cfg = json.loads((onnx_dir / "hdpo_onnx.json").read_text())
    assert cfg["num_layers"] == 2 and cfg["num_kv_heads"] == 2 and cfg["head_dim"] == 8
    assert cfg["input_names"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert cfg["output_names"][1] == "present.0.key" and cfg["opset"] >= 18
    for name in ("model.onnx", "model.onnx.data", "tokenizer.json", "config.json", "generation_config.json"):
        assert (onnx_dir / name).exists(), name
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    dims = {i.name: i.shape for i in sess.get_inputs()}
    assert isinstance(dims["input_ids"][0], str) and isinstance(
        dims["input_ids"][1], str
    )  # dynamic batch/seq
    assert isinstance(dims["past_key_values.0.key"][2], str)  # dynamic past length
    print("llama max abs diff", report["max_abs_logit_diff"])


def test_second_export_is_a_noop(llama_exported):
    said: list[str] = []
    export_run(llama_exported, log=said.append)
    assert any("nothing to do" in s for s in said)


def test_gpt2_export_passes_parity(gpt2_run):
    export_run(gpt2_run, **QUIET)
    report = _check_report(gpt2_run)
    print("gpt2 max abs diff", report["max_abs_logit_diff"])


def test_wrong_position_ids_fail_validation(llama_exported, monkeypatch):
    """Feed ORT position ids that are all 0: attention loses its order and validation fails.

    (A constant shift of the positions would not do: RoPE scores depend only on relative positions, so
    Llama's logits are invariant to it; measured.)
    """
    monkeypatch.setattr(
        ort_generate, "position_ids_for", lambda mask, n: np.zeros((mask.shape[0], n), np.int64)
    )
    report = validate_export(
        llama_exported / "onnx", llama_exported / "merged", atol=1e-4, decode_steps=3, greedy_tokens=8
    )
    assert not report["passed"] and report["max_abs_logit_diff"] > 1e-3
    assert report["failures"][0].startswith("ONNX validation failed: max abs logit diff")


def test_corrupted_weight_fails_export_stage(llama_exported, tmp_path, monkeypatch):
    """export_run raises a clear RunError and still writes validation.json when the graph mismatches the weights.

    The run's merged weights are perturbed after the graph was made (export_decoder is replaced by a copy of
    the good graph, to keep the test fast), so the graph no longer matches the model it claims to be.
    """
    from transformers import AutoModelForCausalLM

    run = copy_run(llama_exported, tmp_path / "run")
    shutil.rmtree(run / "onnx")
    model = AutoModelForCausalLM.from_pretrained(run / "merged")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.05)
    model.save_pretrained(run / "merged")
    write_manifest(run / "merged")  # as if the merge had written these weights

    reuse_exported_graph(monkeypatch, llama_exported)
    with pytest.raises(
        RunError, match=r"max abs logit diff .* > export\.onnx\.atol 0\.0001.*validation\.json"
    ):
        export_run(run, **QUIET)
    report = json.loads((run / "onnx" / "validation.json").read_text())
    assert report["passed"] is False and report["max_abs_logit_diff"] > 1e-3


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_export_reports_agreement(llama_run, llama_exported, precision, monkeypatch):
    """Weight-only MatMulNBits (onnxruntime's quantizer): gated by top-1 agreement and relative logit error.
    (The float32 graph is the module's export of the same merged weights: tracing is tested above.)"""
    reuse_exported_graph(monkeypatch, llama_exported)
    write_spec(
        llama_run,
        export={"onnx": {"enabled": True, "quantize": precision, "greedy_tokens": 8,
                         f"{precision}_min_top1_agreement": 0.5, "quantized_max_rel_logit_error": 0.5}},
    )
    report = export_run(llama_run, **QUIET)
    q, onnx_dir = report["quantized"], llama_run / "onnx"
    assert (onnx_dir / f"model.{precision}.onnx").exists()
    assert json.loads((onnx_dir / "hdpo_onnx.json").read_text())["model_file"] == f"model.{precision}.onnx"
    assert json.loads((onnx_dir / "genai_config.json").read_text())["model"]["decoder"]["filename"] == (
        f"model.{precision}.onnx")
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_dir / f"model.{precision}.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops
    assert 0.5 <= q["top1_agreement"] <= 1.0 and 0.0 <= q["greedy_agreement"] <= 1.0
    assert 0 < q["rel_logit_error"] <= 0.5
    assert q["max_abs_logit_diff"] > report["max_abs_logit_diff"]  # the quantized graph really is a different model
    stats = json.loads((onnx_dir / "quantization.json").read_text())
    assert stats["size_bytes"]["quantized"] < stats["size_bytes"]["float32"]
    assert stats["greedy_tokens_per_s"]["quantized"] > 0 and "greedy_accuracy" not in stats  # no eval.tasks here
    gate = stats["gate"]  # the figures the gate used, where a user reads about the quantized model
    assert {k: gate[k] for k in ("top1_agreement", "rel_logit_error", "greedy_agreement")} == {
        k: q[k] for k in ("top1_agreement", "rel_logit_error", "greedy_agreement")}
    assert (gate["min_top1_agreement"], gate["max_rel_logit_error"], gate["passed"]) == (0.5, 0.5, True)
    validation = json.loads((onnx_dir / "validation.json").read_text())
    assert gate["prompts"] == validation["prompts"] and gate["decode_steps"] == validation["decode_steps"]
    print(precision, q, stats["size_bytes"])


def test_quantized_gate_fails_with_one_line(llama_run, llama_exported, monkeypatch):
    reuse_exported_graph(monkeypatch, llama_exported)
    write_spec(llama_run, export={"onnx": {"enabled": True, "quantize": "int4", "greedy_tokens": 4,
                                           "int4_min_top1_agreement": 0.0, "quantized_max_rel_logit_error": 1e-6}})
    with pytest.raises(RunError, match=r"relative logit error .* > export\.onnx\.quantized_max_rel_logit_error"):
        export_run(llama_run, **QUIET)
    assert json.loads((llama_run / "onnx" / "validation.json").read_text())["passed"] is False


def test_ort_generate_matches_transformers_generate(llama_exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = llama_exported / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    decoder = ort_generate.OrtDecoder(llama_exported / "onnx")
    for prompt in ("Hello, how are you", "def fibonacci(n):"):
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[
                0, len(ids) :
            ].tolist()
        got = decoder.generate([ids], max_new_tokens=24)[0]
        assert got == ref and len(ref) >= 1


def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_generate_equals_transformers_and_never_imports_torch(llama_exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    onnx_dir, prompt = llama_exported / "onnx", "The quick brown"
    code = (
        "import sys\nfrom service.cli import main\n"
        f"try:\n    main(['generate', '--onnx', {str(onnx_dir)!r}, '--prompt', {prompt!r}, '--max-new-tokens', '20'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    res = _run_py(code)
    assert res.returncode == 0, res.stderr
    *text_lines, loaded = res.stdout.rstrip("\n").split("\n")
    assert loaded == "LOADED []"
    merged = llama_exported / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1] :]
    assert "\n".join(text_lines) == tok.decode(out, skip_special_tokens=True)


def test_ort_generate_module_imports_no_torch():
    res = _run_py(
        "import sys, hdpo_core.export.ort_generate\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_sampling_is_seeded(llama_exported):
    dec = ort_generate.OrtDecoder(llama_exported / "onnx")
    a = dec.generate([[5, 6, 7]], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3, stop_at_eos=False)
    b = dec.generate([[5, 6, 7]], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3, stop_at_eos=False)
    greedy = dec.generate([[5, 6, 7]], max_new_tokens=12, stop_at_eos=False)
    assert a == b and len(a[0]) == 12 and a != greedy

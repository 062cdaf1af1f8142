"""QLoRA end to end on the CPU (bitsandbytes' CPU backend): `hdpo-tune run` with a 4-bit base, the adapter-off
reference, bit-exact resume, the dequantized merge and its gate, GGUF export, and the bad inputs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from service.cli import app

pytest.importorskip("bitsandbytes")

QUANT = {"bits": 4, "quant_type": "nf4", "double_quant": True}


def write_job(tmp: Path, model: Path, pairs: Path, *, steps: int = 4, ship: bool = False, **extra) -> Path:
    spec = {
        "model": {"name_or_path": str(model)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "quantization": QUANT,
        "data": {"train": str(pairs), "max_length": 64},
        "train": {"max_steps": steps, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 1e-2,
                  "scheduler": "constant", "save_every": 2, "seed": 0},
        "output": {"dir": str(tmp / "run")},
        **extra,
    }
    if ship:
        spec["merge"] = {"dtype": "float32"}
        spec["export"] = {"onnx": {"enabled": False}, "gguf": {"enabled": True, "types": ["f16"], "modelfile": False}}
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "job.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "job.yaml"


def cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, tiny_pairs) -> Path:
    """One 4-step QLoRA run with merge and GGUF export, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("qlora")
    res = cli("run", str(write_job(tmp, tiny_model_dir, tiny_pairs, ship=True)))
    assert res.exit_code == 0, res.output
    return tmp / "run"


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_qlora_run_trains_merges_and_exports(straight):
    losses = _losses(straight)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert set(load_file(str(straight / "final" / "adapter_model.safetensors"))) and all(
        "lora_" in k for k in load_file(str(straight / "final" / "adapter_model.safetensors")))
    info = json.loads((straight / "merged" / "merge.json").read_text())
    assert info["base_quantization"] == "bnb4:nf4:1:float32"
    assert info["max_abs_logit_diff"] <= info["tolerance"]
    assert info["greedy_identical"] == info["greedy_tokens"] > 0
    config = json.loads((straight / "merged" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain float model: what ONNX/GGUF/serving load
    assert "4-bit nf4" in (straight / "merged" / "README.md").read_text()
    assert (straight / "gguf" / "model.f16.gguf").is_file()
    assert json.loads((straight / "status.json").read_text())["state"] == "succeeded"


def test_qlora_resume_is_bit_exact(straight, tmp_path, tiny_model_dir, tiny_pairs):
    """Interrupted after step 3 (checkpoint at 2), resumed: the same losses and adapter bit for bit."""
    from hdpo_core.metrics_log import MetricsLog

    job = write_job(tmp_path, tiny_model_dir, tiny_pairs)
    orig = MetricsLog.write

    def crash_after_three(self, m):
        orig(self, m)
        if m["step"] == 3:
            raise KeyboardInterrupt

    MetricsLog.write = crash_after_three
    try:
        assert CliRunner().invoke(app, ["run", str(job)]).exit_code == 130
    finally:
        MetricsLog.write = orig
    assert cli("run", str(job)).exit_code == 0
    assert _losses(tmp_path / "run") == _losses(straight)
    a = load_file(str(straight / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "run" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_off_reference_is_the_4bit_base(tiny_model_dir):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from hdpo_core.model import LoraOptions, ModelOptions, build_policy_and_reference, load_causal_lm
    from hdpo_core.quant import QuantOptions

    opts = ModelOptions(str(tiny_model_dir), quantization=QuantOptions())
    policy, reference = build_policy_and_reference(opts, LoraOptions(r=4, alpha=8, dropout=0.0))
    assert reference is None  # no second copy
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    for p in policy.parameters():  # the adapter moves the policy away from the base
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.tensor([[5, 9, 17, 33, 8, 2]])
    with torch.no_grad():
        with policy.disable_adapter():
            ref = policy(input_ids=ids).logits
        four_bit = load_causal_lm(opts)(input_ids=ids).logits
        full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
        adapted = policy(input_ids=ids).logits
    assert torch.equal(ref, four_bit)
    assert not torch.equal(ref, full) and not torch.equal(ref, adapted)


def test_merge_gate_refuses_a_merge_beyond_tolerance(straight, tmp_path, tiny_model_dir):
    from hdpo_core.errors import RunError
    from hdpo_core.export.merge_qlora import merge_qlora
    from hdpo_core.quant import QuantOptions

    with pytest.raises(RunError, match="max abs logit diff .* > merge.tolerance 1e-12"):
        merge_qlora(straight / "final", tmp_path / "merged", base_id=str(tiny_model_dir), dtype="float32",
                    tolerance=1e-12, quant=QuantOptions())
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(("change", "line"), [
    ({"lora": None}, "quantization: a quantized base cannot be fully fine-tuned; add a lora: section"),
    ({"distributed": {"backend": "fsdp"}}, "quantization: not supported with distributed.backend: fsdp"),
    ({"distributed": {"backend": "deepspeed"}}, "quantization: not supported with distributed.backend: deepspeed"),
    ({"quantization": {"bits": 3}}, "quantization.bits"),
])
def test_bad_spec_is_one_line_before_loading(tmp_path, tiny_model_dir, tiny_pairs, change, line):
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs)
    spec = {**yaml.safe_load(job.read_text()), **change}
    job.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    res = cli("validate", str(job))
    assert res.exit_code == 2 and line in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_already_quantized_base_and_missing_backend(tmp_path, tiny_model_dir, tiny_pairs, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "gptq"}}))
    res = cli("run", str(write_job(tmp_path, model, tiny_pairs)))
    assert res.exit_code == 2
    assert res.output.strip().endswith("quantization: " + str(model) + " is already quantized (gptq in config.json "
                                       "quantization_config); point model.name_or_path at the unquantized model, "
                                       "or remove quantization:")
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    res = cli("validate", str(write_job(tmp_path / "b", tiny_model_dir, tiny_pairs)))
    assert res.exit_code == 2
    assert "quantization: needs bitsandbytes, which is not installed; pip install 'hdpo-tune[qlora]'" in res.output


def test_a_model_without_linear_layers_is_refused(tmp_path, tiny_model_dir, tiny_pairs, monkeypatch):
    from hdpo_core import quant

    assert quant.quantizable_layers(str(tiny_model_dir)) == 14  # 2 layers x (4 attention + 3 MLP)
    monkeypatch.setattr(quant, "quantizable_layers", lambda *a, **k: 0)
    res = cli("validate", str(write_job(tmp_path, tiny_model_dir, tiny_pairs)))
    assert res.exit_code == 2 and "has no linear layers bitsandbytes can quantize" in res.output, res.output


def test_served_job_takes_quantization_from_extra_body(tmp_path, tiny_model_dir, tiny_pairs):
    """The jobs service: ``extra_body={"hdpo_tune": {"quantization": ...}}`` lands in the job spec and is echoed;
    QLoRA without LoRA is the spec's own one-line refusal."""
    from service.serve.jobs_api import CreateJob, method_echo, openai_spec
    from service.spec.job import JobSpec

    req = CreateJob(model="m", training_file="file-x", hdpo_tune={"quantization": {"quant_type": "fp4"}})
    spec = openai_spec(req)
    assert spec["quantization"] == {"quant_type": "fp4"} and spec["lora"] == {}
    spec = {**spec, "model": {"name_or_path": str(tiny_model_dir)}, "data": {"train": str(tiny_pairs)},
            "output": {"dir": str(tmp_path)}}
    echo = method_echo(JobSpec.model_validate(spec))
    assert echo["hdpo_tune"]["quantization"] == {"bits": 4, "quant_type": "fp4", "double_quant": True,
                                                 "compute_dtype": None}
    with pytest.raises(ValueError, match="quantization: a quantized base cannot be fully fine-tuned"):
        JobSpec.model_validate({**spec, "lora": None})


def test_eval_loads_the_adapter_on_its_4bit_base(straight):
    """final/quantization.json makes `hdpo-tune eval` (and the eval stage) put the adapter on the k-bit base it
    was trained on, so the policy and its adapter-off reference are the trained ones."""
    import bitsandbytes as bnb

    from hdpo_core.eval.targets import load_causal_lm

    assert json.loads((straight / "final" / "quantization.json").read_text())["bnb_4bit_quant_type"] == "nf4"
    model, _ = load_causal_lm(straight / "final", "peft")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_reference_cache_key_knows_the_quantization(tiny_model_dir):
    """Sweeps share reference log-probs through the cache: a 4-bit reference never reuses float ones."""
    from hdpo_core.model import ModelOptions, model_fingerprint
    from hdpo_core.quant import QuantOptions

    plain = model_fingerprint(ModelOptions(str(tiny_model_dir)))
    nf4 = model_fingerprint(ModelOptions(str(tiny_model_dir), quantization=QuantOptions()))
    fp4 = model_fingerprint(ModelOptions(str(tiny_model_dir), quantization=QuantOptions(quant_type="fp4")))
    on_gpu = model_fingerprint(ModelOptions(str(tiny_model_dir), quantization=QuantOptions(device="cuda")))
    assert len({plain, nf4, fp4}) == 3 and on_gpu == nf4


def test_8bit_base_trains_and_merges(tmp_path, tiny_model_dir):
    """bits: 8 (LLM.int8): the adapter gets gradients; the merge is gated too, with the wider tolerance its
    activation rounding needs (the default one is refused with a hint)."""
    import bitsandbytes as bnb

    from hdpo_core.errors import RunError
    from hdpo_core.export.merge_qlora import merge_qlora
    from hdpo_core.model import LoraOptions, ModelOptions, build_policy_and_reference
    from hdpo_core.quant import QuantOptions

    q = QuantOptions(bits=8)
    policy, _ = build_policy_and_reference(ModelOptions(str(tiny_model_dir), quantization=q),
                                           LoraOptions(r=4, alpha=8, dropout=0.0))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in policy.modules())
    torch.manual_seed(0)
    for p in policy.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    policy(input_ids=torch.tensor([[5, 9, 17, 33]])).logits.sum().backward()
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    policy.save_pretrained(tmp_path / "adapter")
    with pytest.raises(RunError, match="8-bit base needs merge.tolerance near 1e-2"):
        merge_qlora(tmp_path / "adapter", tmp_path / "merged", base_id=str(tiny_model_dir), dtype="float32",
                    tolerance=1e-4, quant=q)
    info = merge_qlora(tmp_path / "adapter", tmp_path / "merged", base_id=str(tiny_model_dir), dtype="float32",
                       tolerance=1e-2, quant=q)
    assert info.base_quantization == "bnb8:float32" and 1e-4 < info.max_abs_logit_diff <= 1e-2

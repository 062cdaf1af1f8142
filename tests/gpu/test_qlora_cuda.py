"""QLoRA on CUDA (bitsandbytes' CUDA kernels; marked ``gpu``, skipped without CUDA): `hdpo-tune run` trains a
4-bit base with LoRA on the GPU, the adapter-off reference is the 4-bit base, and the dequantized merge passes
its gate against the 4-bit model."""

from __future__ import annotations

import json

import pytest
import torch

from tests.e2e.test_qlora import cli, write_job

pytestmark = pytest.mark.gpu


def test_qlora_run_on_cuda_trains_and_merges(tmp_path, tiny_model_dir, tiny_pairs) -> None:
    pytest.importorskip("bitsandbytes")
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=4, merge={"dtype": "float32"},
                    quantization={"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"})
    res = cli("run", str(job))
    assert res.exit_code == 0, res.output
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    info = json.loads((tmp_path / "run" / "merged" / "merge.json").read_text())
    assert info["base_quantization"] == "bnb4:nf4:1:bfloat16"
    assert info["max_abs_logit_diff"] <= info["tolerance"]


def test_adapter_off_reference_is_the_4bit_base_on_cuda(tiny_model_dir) -> None:
    import bitsandbytes as bnb

    from hdpo_core.model import LoraOptions, ModelOptions, build_policy_and_reference, load_causal_lm
    from hdpo_core.quant import QuantOptions

    opts = ModelOptions(str(tiny_model_dir), quantization=QuantOptions(compute_dtype="bfloat16", device="cuda"))
    policy, reference = build_policy_and_reference(opts, LoraOptions(r=4, alpha=8, dropout=0.0))
    assert reference is None and any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    assert next(m for m in policy.modules() if isinstance(m, bnb.nn.Linear4bit)).weight.device.type == "cuda"
    ids = torch.tensor([[5, 9, 17, 33, 8, 2]], device="cuda")
    with torch.no_grad(), policy.disable_adapter():
        ref = policy(input_ids=ids).logits
    with torch.no_grad():
        base = load_causal_lm(opts)(input_ids=ids).logits
    torch.testing.assert_close(ref, base, atol=0, rtol=0)

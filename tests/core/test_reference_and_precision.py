"""The reference in one place (live or precomputed, train and eval alike), the output-layer paths under mixed
precision and ZeRO-3, and the DeepSpeed configuration the trainer hands to accelerate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from hdpo_core.alpha import ScheduledAlpha
from hdpo_core.forward import output_logps
from hdpo_core.logps import chunked_token_logps
from hdpo_core.refcache import precompute_reference
from hdpo_core.trainer import (
    EvalSet,
    TrainHooks,
    TrainOptions,
    TrainPaths,
    configure_deepspeed,
    make_batcher,
    train,
)

from ._tiny import PAD, random_pairs, tiny_llama


class _ModuleHead(nn.Linear):
    """A head whose forward is not ``nn.Linear.forward`` (like LoRA on lm_head): takes the module path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return super().forward(x)


class _Lm(nn.Module):
    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head
        self.config = type("Cfg", (), {"final_logit_softcapping": None})()

    def get_output_embeddings(self) -> nn.Linear:
        return self.head


def test_module_path_equals_chunked_path_values_and_gradients() -> None:
    torch.manual_seed(0)
    plain = nn.Linear(16, 50, bias=False)
    module = _ModuleHead(16, 50, bias=False)
    module.weight.data.copy_(plain.weight.data)
    h = torch.randn(37, 16)
    targets = torch.randint(0, 50, (37,))
    results = []
    for head in (plain, module):
        x = h.clone().requires_grad_(True)
        lp, ent = output_logps(_Lm(head), x, targets, chunk_size=8)
        (lp * torch.linspace(0.5, 1.5, 37)).sum().backward()
        results.append((lp.detach(), ent, x.grad, head.weight.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_backward_keeps_the_forward_autocast() -> None:
    """Backward outside the autocast region (as a caller may run it) gives what backward inside gives, and
    bf16 gradients stay within bf16 noise of the float32 ones."""
    torch.manual_seed(1)
    weight = torch.randn(64, 32) * 0.2
    h = torch.randn(40, 32)
    targets = torch.randint(0, 64, (40,))

    def grads(autocast: bool, backward_inside: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w, x = weight.clone().requires_grad_(True), h.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            lp, _ = chunked_token_logps(x, w, targets, chunk_size=16)
            if backward_inside:
                lp.sum().backward()
        if not backward_inside:
            lp.sum().backward()
        return w.grad, x.grad

    inside, outside, fp32 = grads(True, True), grads(True, False), grads(False, True)
    for a, b in zip(inside, outside, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for a, b in zip(inside, fp32, strict=True):
        assert inside[0].dtype == torch.float32
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_deepspeed_config_gets_the_trainers_batch_and_boundary() -> None:
    cfg = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
           "gradient_clipping": "auto", "zero_optimization": {"stage": 3}}
    configure_deepspeed(cfg, TrainOptions(total_steps=1, batch_size=16, micro_batch_size=2, max_grad_norm=0.5), 2)
    assert cfg == {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
                   "gradient_clipping": 0.5, "zero_optimization": {"stage": 3}}
    configure_deepspeed(cfg, TrainOptions(total_steps=1, max_grad_norm=None), 1)
    assert cfg["gradient_clipping"] == 0.0


@pytest.mark.parametrize("lora", [False, True])
def test_precomputed_train_and_eval_reference_equal_live(tmp_path: Path, lora: bool) -> None:
    from accelerate import Accelerator

    from hdpo_core.model import LoraOptions, apply_lora

    pairs, held_out = random_pairs(8, seed=21), random_pairs(5, seed=22)
    opts = TrainOptions(total_steps=2, batch_size=4, micro_batch_size=2, learning_rate=5e-3, save_every=10**6,
                        eval_every=1, row_tokens=10**6)

    def run(precompute: bool) -> list[dict]:
        model = tiny_llama(seed=0)
        reference = None
        if lora:
            model = apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0))
        else:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        acc = Accelerator(cpu=True)
        ref_cache = eval_cache = None
        if precompute:
            (ref_cache, hit), (eval_cache, _) = precompute_reference(
                acc, reference, model, [(pairs, tmp_path / f"r{lora}.st"), (held_out, None)],
                make_batcher(opts, PAD, model), batch_pairs=3)
            assert not hit and (tmp_path / f"r{lora}.st").exists()
        logged: list[dict] = []
        train(acc, model, reference, pairs, pad_token_id=PAD, alpha=ScheduledAlpha(0.8), opts=opts,
              paths=TrainPaths(None, tmp_path / "final"), save_final=lambda m: None, ref_cache=ref_cache,
              evaluation=EvalSet(held_out, eval_cache), hooks=TrainHooks(on_metrics=logged.append))
        return logged

    live, cached = run(False), run(True)
    for a, b in zip(live, cached, strict=True):
        for key in ("loss", "eval/loss", "eval/rewards/margins", "eval/ref_entropy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key

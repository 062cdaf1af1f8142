"""The training loop: gradient accumulation, packing, resume, LoRA isolation, first-step loss, non-finite."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hdpo_core.alpha import ScheduledAlpha
from hdpo_core.batching import padded_batch
from hdpo_core.errors import RunError
from hdpo_core.forward import SequenceScorer, score
from hdpo_core.model import LoraOptions, apply_lora
from hdpo_core.refcache import compute_ref_logps
from hdpo_core.trainer import TrainHooks, TrainOptions, TrainPaths, batch_order, train

from ._tiny import PAD, random_pairs, tiny_llama

PAIRS = random_pairs(16, seed=11)


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _run(tmp: Path, *, lora: bool, steps: int = 4, alpha: float = 0.8, stop_after: int | None = None,
         ref_cache=None, **overrides):
    model = tiny_llama(seed=0)
    reference = None
    if lora:
        model = apply_lora(model, LoraOptions(r=4, alpha=8, dropout=0.0))
        with torch.no_grad():  # non-zero B so the adapter matters from step 0
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    logged = []

    def on_metrics(m):
        logged.append(m)
        if stop_after is not None and m["step"] == stop_after:
            raise KeyboardInterrupt  # a crash right after a checkpoint

    opts = {"total_steps": steps, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 5e-3, "save_every": 2, "beta": 0.1,
                "packing": True, "row_tokens": 64}
    opts.update(overrides)
    finals = {}
    result = train(_accelerator(), model, reference, PAIRS, pad_token_id=PAD, alpha=ScheduledAlpha(alpha),
                   opts=TrainOptions(**opts), paths=TrainPaths(tmp / "ck", tmp / "final"), ref_cache=ref_cache,
                   save_final=lambda m: finals.update(m=m), hooks=TrainHooks(on_metrics=on_metrics))
    return model, logged, result


def _losses(logged):
    return [m["loss"] for m in logged]


def test_gradient_accumulation_equals_one_big_micro_batch(tmp_path):
    _, a, _ = _run(tmp_path / "a", lora=False, micro_batch_size=8)
    _, b, _ = _run(tmp_path / "b", lora=False, micro_batch_size=2)
    assert len(a) == 4
    torch.testing.assert_close(torch.tensor(_losses(a)), torch.tensor(_losses(b)), atol=1e-5, rtol=0)
    assert abs(a[-1]["grad_norm"] - b[-1]["grad_norm"]) < 1e-4


def test_packed_training_equals_padded_training(tmp_path):
    _, a, _ = _run(tmp_path / "a", lora=True, packing=True)
    _, b, _ = _run(tmp_path / "b", lora=True, packing=False)
    torch.testing.assert_close(torch.tensor(_losses(a)), torch.tensor(_losses(b)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [True, False])
def test_activation_offloading_gives_the_same_training(tmp_path, lora):
    """train.activation_offloading packs every tensor saved for backward into a fresh host copy
    (save_on_cpu) and unpacks it in backward: the trajectory must not change."""
    model_a, a, _ = _run(tmp_path / "a", lora=lora, steps=3)
    model_b, b, _ = _run(tmp_path / "b", lora=lora, steps=3, activation_offloading=True)
    torch.testing.assert_close(torch.tensor(_losses(a)), torch.tensor(_losses(b)), atol=1e-6, rtol=0)
    assert [m["grad_norm"] for m in a] == pytest.approx([m["grad_norm"] for m in b], abs=1e-5)
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("lora", [True, False])
def test_resume_continues_the_same_trajectory(tmp_path, lora):
    straight_model, straight, _ = _run(tmp_path / "s", lora=lora, steps=6)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "r", lora=lora, steps=6, stop_after=3)  # checkpoint at step 2, crash in step 3
    resumed_model, rest, result = _run(tmp_path / "r", lora=lora, steps=6)
    assert result.resumed_from == 2
    assert [m["step"] for m in rest] == [3, 4, 5, 6]
    torch.testing.assert_close(torch.tensor(_losses(rest)), torch.tensor(_losses(straight)[2:]), atol=1e-5, rtol=0)
    for (n, p), (_, q) in zip(straight_model.named_parameters(), resumed_model.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=n)


def test_lora_changes_adapter_weights_only(tmp_path):
    before = {n: p.detach().clone() for n, p in apply_lora(tiny_llama(seed=0), LoraOptions(r=4, alpha=8,
                                                                                          dropout=0.0)).named_parameters()}
    model, logged, _ = _run(tmp_path, lora=True, steps=3)
    assert all(math.isfinite(m["loss"]) for m in logged)
    changed_lora = [n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, before[n])]
    assert len(changed_lora) == sum("lora_" in n for n in before)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("alpha", [0.7, 1.3])
def test_first_step_loss_matches_independent_computation(tmp_path, alpha):
    model = tiny_llama(seed=0).eval()
    order = batch_order(len(PAIRS), 8, 0, 0)
    batch = padded_batch([PAIRS[i] for i in order], PAD)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = torch.log_softmax(logits, -1)
    tgt = batch.target_ids.clamp(min=0)
    tok = logp.gather(2, tgt[..., None]).squeeze(-1) * (batch.target_ids != -100)
    seq = tok.sum(-1)
    delta_ref = seq[0::2] - seq[1::2]
    expected = (-F.logsigmoid((alpha - 1) * 0.1 * delta_ref)).mean().item()
    _, logged, _ = _run(tmp_path, lora=False, steps=1, alpha=alpha)
    assert logged[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - math.log(2)) > 1e-3  # not trivially log 2


def test_precomputed_reference_equals_live_reference(tmp_path):
    ref_model = tiny_llama(seed=0).eval()
    scorer = SequenceScorer(ref_model)
    cache = compute_ref_logps(PAIRS, lambda ps: padded_batch(ps, PAD), lambda b: score(scorer, b), 5)
    _, live, _ = _run(tmp_path / "a", lora=False)
    _, cached, _ = _run(tmp_path / "b", lora=False, ref_cache=cache)
    torch.testing.assert_close(torch.tensor(_losses(live)), torch.tensor(_losses(cached)), atol=1e-5, rtol=0)


def test_nonfinite_stop_names_the_step_and_skip_continues(tmp_path):
    with pytest.raises(RunError, match=r"step 1: non-finite loss=nan"):
        _run_nan(tmp_path / "a", "stop")
    logged = _run_nan(tmp_path / "b", "skip")
    assert [m["skipped"] for m in logged] == [True, True]


def _run_nan(tmp, mode):
    pairs = list(PAIRS)
    model = tiny_llama(seed=0)
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    reference = tiny_llama(seed=0).eval().requires_grad_(False)
    logged = []
    train(_accelerator(), model, reference, pairs, pad_token_id=PAD, alpha=ScheduledAlpha(1.0),
          opts=TrainOptions(total_steps=2, batch_size=8, micro_batch_size=8, on_nonfinite=mode, save_every=100),
          paths=TrainPaths(tmp / "ck", tmp / "final"), save_final=lambda m: None,
          hooks=TrainHooks(on_metrics=logged.append))
    return logged


def test_batch_order_is_a_pure_function_of_seed_and_step():
    a = [batch_order(10, 4, s, 3) for s in range(5)]
    assert a == [batch_order(10, 4, s, 3) for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10))  # first epoch is a permutation
    assert a != [batch_order(10, 4, s, 4) for s in range(5)]

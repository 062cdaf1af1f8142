"""Host syncs in the hot path, counted: every read of a tensor's value on the host (``.item()``, ``.tolist()``,
``.cpu()``, ``float()``/``int()``/``bool()`` of a tensor, ``.numpy()``, ``nonzero``, boolean-mask indexing)
stalls a GPU until its queue drains. A training step must read once, whatever the number of micro-batches;
and keeping the sums on the device must not change a single logged number."""

from __future__ import annotations

import copy
import inspect
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from hdpo_core.alpha import ScheduledAlpha
from hdpo_core.forward import SequenceScores
from hdpo_core.steps import DEVICE_SUMS, METRIC_SUMS, LossSettings, StepSums, metric_means, pair_loss
from hdpo_core.trainer import TrainHooks, TrainOptions, TrainPaths, train

from ._tiny import PAD, random_pairs, tiny_llama

#: Host-side work by design: the data order and batch building run on CPU tensors before anything is on the GPU.
#: Also not counted: torch.optim's own reads (the CPU AdamW reads its step count per parameter; on CUDA the
#: trainer uses the fused AdamW, which reads nothing; tests/gpu counts real syncs with sync_debug_mode).
_HOST_ONLY = {"batch_order", "packed_batch", "padded_batch", "_place", "pack_rows", "take"}


@contextmanager
def counting_host_reads() -> Iterator[Counter]:
    """Count host reads of tensor values by the method used, skipping the host-only batch building."""
    seen: Counter = Counter()
    originals = {}

    def wrap(name: str):  # noqa: ANN202
        orig = getattr(torch.Tensor, name)
        originals[name] = orig

        def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if name != "__getitem__" or (isinstance(args[0], torch.Tensor) and args[0].dtype == torch.bool):
                code = inspect.currentframe().f_back.f_code  # type: ignore[union-attr]
                if code.co_name not in _HOST_ONLY and "torch/optim/" not in code.co_filename:
                    seen[name] += 1
            return orig(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)

    for name in ("item", "tolist", "cpu", "numpy", "nonzero", "__float__", "__int__", "__bool__", "__getitem__"):
        wrap(name)
    try:
        yield seen
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)


def _train(tmp: Path, steps: int, micro: int) -> tuple[list[dict], Counter]:
    from accelerate import Accelerator

    model = tiny_llama(seed=0)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    logged: list[dict] = []
    opts = TrainOptions(total_steps=steps, batch_size=8, micro_batch_size=micro, learning_rate=5e-3,
                        save_every=10**6, max_grad_norm=1.0, row_tokens=10**6)
    acc = Accelerator(cpu=True)
    with counting_host_reads() as seen:
        train(acc, model, reference, random_pairs(16, seed=11), pad_token_id=PAD, alpha=ScheduledAlpha(0.8),
              opts=opts, paths=TrainPaths(None, tmp / "final"), save_final=lambda m: None,
              hooks=TrainHooks(on_metrics=logged.append))
    return logged, seen


def test_one_host_read_per_step_whatever_the_micro_batches(tmp_path: Path) -> None:
    """(reads of 3 steps) - (reads of 1 step) = 2 steps' reads: set-up and the final save cancel out."""
    per_step = {}
    for micro in (2, 8):
        _, one = _train(tmp_path / f"a{micro}", 1, micro)
        _, three = _train(tmp_path / f"b{micro}", 3, micro)
        per_step[micro] = {k: (three[k] - one[k]) / 2 for k in set(one) | set(three) if three[k] != one[k]}
    # 4 micro-batches per step (micro=2) read exactly as often as 1 (micro=8): once, the packed .tolist()
    assert per_step[2] == per_step[8] == {"tolist": 1}, per_step


def _host_metrics(policy: SequenceScores, ref: SequenceScores, s: LossSettings) -> dict[str, float]:
    """The metric sums as they were computed before: one .item() per number, in float64 on the host."""
    from hdpo_core.loss import hdpo_loss

    out = hdpo_loss(policy.chosen, policy.rejected, ref.chosen, ref.rejected, beta=s.beta, alpha=s.alpha,
                    sft_weight=s.sft_weight, chosen_token_counts=policy.token_counts[0::2].float())
    c, r = out.chosen_rewards, out.rejected_rewards
    return {"loss": out.losses.sum().item(), "rewards/chosen": c.sum().item(), "rewards/rejected": r.sum().item(),
            "rewards/accuracies": (c > r).float().sum().item(), "rewards/margins": (c - r).sum().item(),
            "logps/chosen": policy.chosen.sum().item(), "logps/rejected": policy.rejected.sum().item(),
            "dpo_rewards/chosen": out.dpo_chosen_rewards.sum().item(),
            "dpo_rewards/rejected": out.dpo_rejected_rewards.sum().item(),
            "entropy_sum": policy.entropy_sum.sum().item(), "entropy_tokens": policy.token_counts.sum().item(),
            "ref_entropy_sum": ref.entropy_sum.sum().item(), "pairs": float(policy.chosen.shape[0])}


@pytest.mark.parametrize("sft", [0.0, 0.3])
def test_device_sums_equal_the_per_item_host_sums(sft: float) -> None:
    g = torch.Generator().manual_seed(3)
    settings = LossSettings(alpha=0.7, beta=0.1, sft_weight=sft)
    sums, expected = StepSums(), dict.fromkeys(METRIC_SUMS, 0.0)
    for n in (3, 5, 1):  # three micro-batches of different sizes
        def scores(n: int = n) -> SequenceScores:
            return SequenceScores(-20 * torch.rand(2 * n, generator=g), 5 * torch.rand(2 * n, generator=g),
                                  torch.randint(1, 9, (2 * n,), generator=g))
        policy, ref = scores(), scores()
        pair_loss(policy, ref, settings, sums)
        for k, v in _host_metrics(policy, ref, settings).items():
            expected[k] += v
    values = dict(zip(METRIC_SUMS, sums.packed("cpu").tolist(), strict=True))
    for k in DEVICE_SUMS + ("pairs",):
        assert values[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-6), k
    got, want = metric_means(values), metric_means(expected)
    assert got.keys() == want.keys() and all(math.isclose(got[k], want[k], rel_tol=1e-6, abs_tol=1e-6) for k in got)

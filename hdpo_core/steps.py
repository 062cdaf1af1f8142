"""One optimizer step's worth of work: micro-batches of pairs -> H-DPO loss, gradients and metric sums.

The loss of a step is the mean over the step's whole global batch: every micro-batch contributes
``sum(losses) / global_batch`` to the gradient (scaled by the number of processes, since DDP averages
gradients across ranks). So one micro-batch of 8 and four of 2 give the same update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .batching import TokenBatch
from .forward import SequenceScores, score
from .loss import hdpo_loss
from .tokenize import TokenizedPair

METRIC_SUMS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected", "dpo_rewards/chosen", "dpo_rewards/rejected",
               "entropy_sum", "entropy_tokens", "ref_entropy_sum", "pairs", "tokens", "nonfinite")


@dataclass
class StepSums:
    """Sums over the pairs (and completion tokens) of a step; divided into means by :meth:`means`."""

    values: dict[str, float] = field(default_factory=lambda: dict.fromkeys(METRIC_SUMS, 0.0))

    def add(self, key: str, value: float) -> None:
        self.values[key] += value

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.values[k] for k in METRIC_SUMS], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> StepSums:
        return cls(dict(zip(METRIC_SUMS, t.tolist(), strict=True)))

    def means(self) -> dict[str, float]:
        v, n = self.values, max(self.values["pairs"], 1.0)
        out = {k: v[k] / n for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                     "rewards/margins", "logps/chosen", "logps/rejected",
                                     "dpo_rewards/chosen", "dpo_rewards/rejected")}
        out["entropy"] = v["entropy_sum"] / max(v["entropy_tokens"], 1.0)
        out["ref_entropy"] = v["ref_entropy_sum"] / max(v["entropy_tokens"], 1.0)
        return out


@dataclass(frozen=True)
class LossSettings:
    alpha: float
    beta: float
    sft_weight: float = 0.0


def pair_loss(policy: SequenceScores, ref: SequenceScores, settings: LossSettings, sums: StepSums) -> torch.Tensor:
    """Per-pair H-DPO losses ``[pairs]``; adds this micro-batch's metric sums to ``sums``."""
    out = hdpo_loss(policy.chosen, policy.rejected, ref.chosen.to(policy.logps.device),
                    ref.rejected.to(policy.logps.device), beta=settings.beta, alpha=settings.alpha,
                    sft_weight=settings.sft_weight, chosen_token_counts=policy.token_counts[0::2].float())
    losses = out.losses
    sums.add("loss", losses.detach().sum().item())
    sums.add("rewards/chosen", out.chosen_rewards.sum().item())
    sums.add("rewards/rejected", out.rejected_rewards.sum().item())
    sums.add("rewards/accuracies", (out.chosen_rewards > out.rejected_rewards).float().sum().item())
    sums.add("rewards/margins", (out.chosen_rewards - out.rejected_rewards).sum().item())
    sums.add("logps/chosen", policy.chosen.detach().sum().item())
    sums.add("logps/rejected", policy.rejected.detach().sum().item())
    sums.add("dpo_rewards/chosen", out.dpo_chosen_rewards.sum().item())
    sums.add("dpo_rewards/rejected", out.dpo_rejected_rewards.sum().item())
    sums.add("entropy_sum", policy.entropy_sum.sum().item())
    sums.add("entropy_tokens", policy.token_counts.sum().item())
    sums.add("ref_entropy_sum", ref.entropy_sum.sum().item())
    sums.add("pairs", float(losses.shape[0]))
    return losses


def run_micro_batches(
    micro_batches: Sequence[Sequence[int]],
    pairs: Sequence[TokenizedPair],
    make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch],
    policy_scorer: torch.nn.Module,
    ref_scores: Callable[[Sequence[int], TokenBatch], SequenceScores],
    settings: LossSettings,
    *,
    loss_scale: float,
    backward: Callable[[torch.Tensor, bool], None] | None,
    device: torch.device,
    offload: bool = False,
) -> StepSums:
    """Forward (and, with ``backward``, backward) over micro-batches of pair indices.

    ``backward(loss, is_last)`` lets the caller skip gradient sync on all but the last micro-batch.
    ``loss_scale`` is ``world_size / global_batch``. ``offload`` keeps the tensors autograd saves for backward
    in (pinned) host memory (``torch.autograd.graph.save_on_cpu``): activation memory leaves the GPU.
    """
    sums = StepSums()
    for i, idx in enumerate(micro_batches):
        batch = make_batch([pairs[j] for j in idx]).to(device)
        ref = ref_scores(idx, batch)
        saved = (torch.autograd.graph.save_on_cpu(pin_memory=torch.device(device).type == "cuda")
                 if offload and backward is not None else contextlib.nullcontext())
        with torch.set_grad_enabled(backward is not None), saved:
            policy = score(policy_scorer, batch)
            losses = pair_loss(policy, ref, settings, sums)
            sums.add("tokens", float(batch.num_tokens))
            if backward is not None:
                backward(losses.sum() * loss_scale, i == len(micro_batches) - 1)
    return sums

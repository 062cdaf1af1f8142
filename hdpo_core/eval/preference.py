"""Preference metrics on held-out pairs: H-DPO loss, reward accuracy/margins, log-probs, and the policy's
teacher-forced entropy on the chosen completions.

Rewards are H-DPO's implicit reward ``alpha*beta*logp - beta*logp_ref`` (:mod:`hdpo_core.loss`); DPO's
``beta*(logp - logp_ref)`` margin is reported too, named ``dpo_rewards/*``. Entropy is exact over the vocabulary
at each scored (completion) position, averaged per token: ``sum(entropy) / sum(tokens)`` over the chosen
completions, so long completions weigh by their length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hdpo_core.batching import padded_batch
from hdpo_core.forward import SequenceScorer, SequenceScores, score
from hdpo_core.loss import hdpo_loss
from hdpo_core.tokenize import TokenizedPair


@torch.no_grad()
def score_pairs(model: torch.nn.Module, pairs: Sequence[TokenizedPair], *, pad_token_id: int,
                batch_pairs: int = 8) -> SequenceScores:
    """Teacher-forced scores of every pair (``[2 * pairs]``: chosen, rejected interleaved)."""
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    parts = [score(scorer, padded_batch(pairs[i:i + batch_pairs], pad_token_id).to(device))
             for i in range(0, len(pairs), batch_pairs)]
    return SequenceScores(logps=torch.cat([p.logps for p in parts]).cpu(),
                          entropy_sum=torch.cat([p.entropy_sum for p in parts]).cpu(),
                          token_counts=torch.cat([p.token_counts for p in parts]).cpu())


def chosen_entropy(scores: SequenceScores) -> float:
    """Mean per-token entropy (nats) over the chosen completions."""
    tokens = scores.token_counts[0::2].sum().clamp(min=1)
    return float(scores.entropy_sum[0::2].sum() / tokens)


def preference_metrics(policy: SequenceScores, reference: SequenceScores | None, *, alpha: float,
                       beta: float) -> dict[str, float]:
    """TRL-named metrics (means over pairs). Without a reference only log-probs and entropy are reported."""
    out = {
        "pairs": float(policy.chosen.numel()),
        "logps/chosen": float(policy.chosen.mean()),
        "logps/rejected": float(policy.rejected.mean()),
        "logps/accuracy": float((policy.chosen > policy.rejected).float().mean()),
        "entropy/chosen": chosen_entropy(policy),
    }
    if reference is None:
        return out
    res = hdpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, beta=beta, alpha=alpha)
    margins = res.chosen_rewards - res.rejected_rewards
    dpo_margins = res.dpo_chosen_rewards - res.dpo_rejected_rewards
    out.update({
        "loss": float(res.losses.mean()),
        "rewards/chosen": float(res.chosen_rewards.mean()),
        "rewards/rejected": float(res.rejected_rewards.mean()),
        "rewards/margins": float(margins.mean()),
        "rewards/accuracies": float((margins > 0).float().mean()),
        "dpo_rewards/margins": float(dpo_margins.mean()),
        "dpo_rewards/accuracies": float((dpo_margins > 0).float().mean()),
        "ref_logps/chosen": float(reference.chosen.mean()),
        "ref_logps/rejected": float(reference.rejected.mean()),
    })
    return out

"""The H-DPO loss: a pure function of four sequence log-prob tensors.

H-DPO (Omura et al., arXiv 2411.07595) splits DPO's reverse KL into entropy and cross-entropy and puts a
coefficient ``alpha`` on the entropy part. The loss is DPO's with ``alpha*beta`` on the policy log-ratio
and ``beta`` on the reference::

    h    = alpha*beta*(logp(y_w) - logp(y_l)) - beta*(logp_ref(y_w) - logp_ref(y_l))
    loss = -log sigmoid(h)

Facts the tests pin down:

* ``alpha = 1`` is DPO's sigmoid loss exactly.
* At initialisation (policy == reference) ``h = (alpha-1)*beta*Δ_ref``, so the first loss is not log 2.
* Because log-probs are sums over completion tokens, ``-(1-alpha)*beta*Δ_ref`` acts as a
  length-dependent margin: for alpha < 1, pairs whose chosen response is much longer (lower ``logp_ref``)
  start with a *positive* push; for alpha > 1 the sign flips.
* The implicit reward of H-DPO is ``alpha*beta*logp(y) - beta*logp_ref(y)`` (up to a per-prompt constant);
  that is what ``rewards/*`` report. DPO's ``beta*(logp - logp_ref)`` is returned as ``dpo_*_rewards``.

``sft_weight`` adds RPO / TRL ``sft``-style NLL on the chosen response (mean per token) against likelihood
displacement; it needs ``chosen_token_counts``.

The loss takes its configuration as one object, :class:`~hdpo_core.settings.LossSettings` (the job spec's
``hdpo:`` section builds exactly that object), through :func:`hdpo_loss_with`; :func:`hdpo_loss` is the same
loss spelled with plain numbers. A new loss setting is two edits: its field on ``LossSettings`` and its use in
:func:`hdpo_loss_with` (see docs/architecture.md, "Settings: one carrier").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .settings import LossSettings


@dataclass(frozen=True)
class HDPOLossOutput:
    """Per-pair outputs, all shaped ``[pairs]``. Rewards are detached."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    logits: torch.Tensor
    dpo_chosen_rewards: torch.Tensor
    dpo_rejected_rewards: torch.Tensor


def hdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    sft_weight: float = 0.0,
    chosen_token_counts: torch.Tensor | None = None,
) -> HDPOLossOutput:
    """H-DPO loss per pair, from plain numbers: :func:`hdpo_loss_with` with ``LossSettings(alpha, beta,
    sft_weight)`` (every other setting at its default).

    Args:
        policy_chosen_logps: ``[pairs]`` summed log-probs of the chosen completions under the policy.
        policy_rejected_logps: ``[pairs]`` same for the rejected completions.
        ref_chosen_logps: ``[pairs]`` chosen completions under the reference (no grad needed).
        ref_rejected_logps: ``[pairs]`` rejected completions under the reference.
        beta: KL strength, > 0.
        alpha: entropy coefficient, > 0 (1 = DPO): this step's value (schedules and controllers give one).
        sft_weight: weight of the chosen-response NLL term (0 = off).
        chosen_token_counts: ``[pairs]`` completion token counts, required when ``sft_weight > 0``.

    Returns:
        :class:`HDPOLossOutput` with unreduced ``losses`` (the caller takes the mean).
    """
    return hdpo_loss_with(LossSettings(alpha=alpha, beta=beta, sft_weight=sft_weight), policy_chosen_logps,
                          policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                          chosen_token_counts=chosen_token_counts)


def hdpo_loss_with(
    settings: LossSettings,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    chosen_token_counts: torch.Tensor | None = None,
) -> HDPOLossOutput:
    """H-DPO loss per pair with the loss configured by ``settings`` (tensors as in :func:`hdpo_loss`).

    ``settings.alpha`` must be this step's number (:meth:`LossSettings.with_alpha`), not ``'auto'``."""
    alpha, beta, sft_weight = settings.alpha, settings.beta, settings.sft_weight
    shapes = {t.shape for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1:
        raise ValueError(f"hdpo_loss: the four log-prob tensors must share one shape, got {sorted(map(tuple, shapes))}")
    if beta <= 0:
        raise ValueError(f"hdpo_loss: beta must be > 0, got {beta}")
    if isinstance(alpha, str) or alpha <= 0:
        raise ValueError(f"hdpo_loss: alpha must be a number > 0 (this step's value), got {alpha!r}")
    ref_chosen_logps = ref_chosen_logps.detach()
    ref_rejected_logps = ref_rejected_logps.detach()
    policy_delta = policy_chosen_logps - policy_rejected_logps
    ref_delta = ref_chosen_logps - ref_rejected_logps
    logits = alpha * beta * policy_delta - beta * ref_delta
    losses = -F.logsigmoid(logits)
    if sft_weight > 0:
        if chosen_token_counts is None:
            raise ValueError("hdpo_loss: sft_weight > 0 needs chosen_token_counts")
        losses = losses + sft_weight * (-policy_chosen_logps / chosen_token_counts.clamp(min=1))
    return HDPOLossOutput(
        losses=losses,
        chosen_rewards=(alpha * beta * policy_chosen_logps - beta * ref_chosen_logps).detach(),
        rejected_rewards=(alpha * beta * policy_rejected_logps - beta * ref_rejected_logps).detach(),
        logits=logits.detach(),
        dpo_chosen_rewards=(beta * (policy_chosen_logps - ref_chosen_logps)).detach(),
        dpo_rejected_rewards=(beta * (policy_rejected_logps - ref_rejected_logps)).detach(),
    )

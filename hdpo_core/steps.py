"""One optimizer step's worth of work: micro-batches of pairs -> H-DPO loss, gradients and metric sums.

The loss of a step is the mean over the step's whole global batch: every micro-batch contributes
``sum(losses) / global_batch`` to the gradient (scaled by the number of processes, since DDP averages
gradients across ranks). So one micro-batch of 8 and four of 2 give the same update.

Host syncs: nothing here reads a device value. The per-pair metric sums accumulate in ONE float64 device tensor
(:class:`StepSums`), and the counts the host already knows (pairs, tokens) stay Python ints; the trainer reads
everything with one transfer per step (nanoGPT and litgpt likewise only sync when they read a number).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from .batching import TokenBatch, to_device
from .forward import SequenceScores, score
from .loss import hdpo_loss_with
from .settings import LossSettings

__all__ = ["DEVICE_SUMS", "METRIC_SUMS", "LossSettings", "StepSums", "evaluate_pairs", "metric_means", "pair_loss",
           "run_micro_batches", "saved_tensors_on_host"]
from .tokenize import TokenizedPair

#: Sums kept on the device, in this order.
DEVICE_SUMS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected", "dpo_rewards/chosen", "dpo_rewards/rejected",
               "entropy_sum", "entropy_tokens", "ref_entropy_sum")
#: Every sum of a step, as laid out by :meth:`StepSums.packed` (device sums, then the host counts).
METRIC_SUMS = (*DEVICE_SUMS, "pairs", "tokens")
_PER_PAIR = DEVICE_SUMS[:9]


class StepSums:
    """Sums over the pairs (and completion tokens) of a step.

    ``device`` is ``[len(DEVICE_SUMS)]`` float64 on the model's device (created by the first :meth:`add`);
    ``pairs`` and ``tokens`` are host ints. :meth:`packed` lays all of them out in :data:`METRIC_SUMS` order
    for one reduce and one read; :func:`metric_means` turns the read values into the logged means.
    """

    def __init__(self) -> None:
        self.device: torch.Tensor | None = None
        self.pairs = 0
        self.tokens = 0

    def add_vector(self, values: torch.Tensor) -> None:
        values = values.detach().to(torch.float64)
        self.device = values if self.device is None else self.device + values

    def add(self, key: str, value: torch.Tensor | float) -> None:
        """Add to one device sum (tests and fault injection; the hot path uses :meth:`add_vector`)."""
        one_hot = torch.zeros(len(DEVICE_SUMS), dtype=torch.float64,
                              device=self.device.device if self.device is not None else None)
        one_hot[DEVICE_SUMS.index(key)] = 1.0
        self.add_vector(one_hot * value)

    def packed(self, device: torch.device | str) -> torch.Tensor:
        """``[len(METRIC_SUMS)]`` float64 on ``device`` (a host->device copy, never a sync)."""
        sums = self.device if self.device is not None else torch.zeros(len(DEVICE_SUMS), dtype=torch.float64)
        counts = torch.tensor([float(self.pairs), float(self.tokens)], dtype=torch.float64)
        return torch.cat([sums.to(device), to_device(counts, device)])


def metric_means(values: dict[str, float]) -> dict[str, float]:
    """The logged means from read sums (keys of :data:`METRIC_SUMS`): per pair, entropies per token."""
    n = max(values["pairs"], 1.0)
    out = {k: values[k] / n for k in _PER_PAIR}
    out["entropy"] = values["entropy_sum"] / max(values["entropy_tokens"], 1.0)
    out["ref_entropy"] = values["ref_entropy_sum"] / max(values["entropy_tokens"], 1.0)
    return out


def pair_loss(policy: SequenceScores, ref: SequenceScores, settings: LossSettings, sums: StepSums) -> torch.Tensor:
    """Per-pair H-DPO losses ``[pairs]``; adds this micro-batch's metric sums to ``sums`` (on the device).
    ``settings`` go to the loss as they are (``settings.alpha``: this step's value)."""
    device = policy.logps.device
    ref_chosen, ref_rejected = ref.chosen.to(device), ref.rejected.to(device)
    out = hdpo_loss_with(settings, policy.chosen, policy.rejected, ref_chosen, ref_rejected,
                         chosen_token_counts=policy.token_counts[0::2].float())
    c, r = out.chosen_rewards.detach(), out.rejected_rewards.detach()
    with torch.no_grad():
        vec = torch.stack([out.losses.detach().sum(), c.sum(), r.sum(), (c > r).float().sum(), (c - r).sum(),
                           policy.chosen.detach().sum(), policy.rejected.detach().sum(),
                           out.dpo_chosen_rewards.detach().sum(), out.dpo_rejected_rewards.detach().sum(),
                           policy.entropy_sum.sum(), policy.token_counts.sum().float(),
                           ref.entropy_sum.to(device).sum()])
    sums.add_vector(vec)
    sums.pairs += int(out.losses.shape[0])
    return out.losses


def saved_tensors_on_host(device: torch.device | str, weight_shapes: set[tuple[int, ...]],
                          min_bytes: int = 1 << 14) -> contextlib.AbstractContextManager[None]:
    """Keep the activations autograd saves for backward in (pinned) host memory, but NOT weights or small
    tensors. ``save_on_cpu`` alone also moves every weight a Linear saves (under autocast, its bf16 copy): the
    whole model would cross to the host and back each micro-batch. A saved tensor is taken for a weight when it
    is an ``nn.Parameter`` or has at most 2 dims and a parameter's shape (``weight_shapes``); activations are
    ``[rows, T, ...]`` or ``[tokens, hidden]``, and a rare coincidence only means one tensor stays put."""
    pin = torch.device(device).type == "cuda"

    def pack(t: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if (isinstance(t, torch.nn.Parameter) or t.device.type == "cpu" or t.numel() * t.element_size() < min_bytes
                or (t.dim() <= 2 and tuple(t.shape) in weight_shapes)):
            return t, None
        host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=pin)
        host.copy_(t, non_blocking=pin)
        return None, host

    def unpack(packed: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
        kept, host = packed
        if host is not None:
            return host.to(device, non_blocking=pin)
        assert kept is not None  # pack() keeps exactly one of the two
        return kept

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


@contextlib.contextmanager
def _offloading(model: torch.nn.Module | None, device: torch.device | str) -> Iterator[None]:
    if model is None:
        yield
        return
    with saved_tensors_on_host(device, {tuple(p.shape) for p in model.parameters()}):
        yield


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
    ``loss_scale`` is ``world_size / global_batch``. ``offload`` keeps the activations autograd saves for
    backward in (pinned) host memory (:func:`saved_tensors_on_host`): activation memory leaves the GPU.
    """
    sums = StepSums()
    for i, idx in enumerate(micro_batches):
        batch = make_batch([pairs[j] for j in idx]).to(device)
        ref = ref_scores(idx, batch)
        with torch.set_grad_enabled(backward is not None), _offloading(policy_scorer if offload and backward is not None else None, device):
            policy = score(policy_scorer, batch)
            losses = pair_loss(policy, ref, settings, sums)
            sums.tokens += int(batch.num_tokens)
            if backward is not None:
                backward(losses.sum() * loss_scale, i == len(micro_batches) - 1)
    return sums


def evaluate_pairs(scorer: torch.nn.Module, ref_scores: Callable[[Sequence[int], TokenBatch], SequenceScores],
                   pairs: Sequence[TokenizedPair], make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch],
                   settings: LossSettings, *, micro_batch_size: int, device: torch.device,
                   autocast: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
                   ) -> dict[str, float]:
    """Metric means over ``pairs`` without gradients (dropout off), read with one host transfer.

    ``scorer`` must be the PREPARED scorer the trainer trains: under FSDP2 its parameters are sharded
    DTensors that only the FSDP root gathers, so a fresh ``SequenceScorer(policy)`` beside it cannot run
    (``aten.embedding`` gets mixed Tensor and DTensor). ``ref_scores(indices, batch)`` indexes ``pairs``.
    """
    micro = [list(range(i, min(i + micro_batch_size, len(pairs)))) for i in range(0, len(pairs), micro_batch_size)]
    was_training = scorer.training
    scorer.eval()
    try:
        with torch.no_grad(), autocast():
            sums = run_micro_batches(micro, pairs, make_batch, scorer, ref_scores, settings, loss_scale=1.0,
                                     backward=None, device=device)
    finally:
        scorer.train(was_training)
    return metric_means(dict(zip(METRIC_SUMS, sums.packed(device).tolist(), strict=True)))

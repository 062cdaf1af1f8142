"""Sequence log-probs and entropy: the simple path and the chunked fast path.

DPO bugs hide here, so both paths are small and tested against each other:

* :func:`sequence_logps` is the reference implementation on full ``[batch, seq, vocab]`` logits: it owns the
  one-token label shift and the mask (prompt and padding contribute exactly zero).
* :func:`chunked_token_logps` computes the same per-token log-probs straight from hidden states through the
  output layer, ``chunk_size`` tokens at a time, and never materialises ``[tokens, vocab]`` float32 logits.
  Plain autograd would keep every chunk's logits alive for backward (the memory chunking was meant to save), so
  :class:`_ChunkedLogps` recomputes each chunk's logits in backward instead. The per-token entropy (exact,
  over the whole vocabulary) comes out of the same chunks for free.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the labelled tokens of each row.

    Args:
        logits: ``[batch, seq, vocab]``; position ``t`` predicts token ``t+1``.
        labels: ``[batch, seq]`` input ids with ``ignore_index`` on prompt and padding positions.

    Returns:
        ``(logps, counts)``, both ``[batch]``: the sum of ``log p(label_t | <t)`` over labelled positions
        (float32) and the number of such positions.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"sequence_logps: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != ignore_index
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    token_logps = torch.gather(F.log_softmax(shifted_logits, dim=-1), 2, safe_targets.unsqueeze(-1)).squeeze(-1)
    token_logps = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    return token_logps.sum(-1), mask.sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Exact entropy ``-sum_v p_v log p_v`` in nats over the last dim; ``[..., vocab] -> [...]`` (float32)."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logits_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``hidden @ weight.t()`` runs in here: autocast's when it is on, else the inputs' own."""
    dev = _device_type(hidden)
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    return logits.float()


def _device_type(t: torch.Tensor) -> str:
    return t.device.type if t.device.type in ("cuda", "cpu") else "cuda"


class _ChunkedLogps(torch.autograd.Function):
    """Token log-probs through the output layer, recomputing chunk logits in backward.

    Memory: one ``[chunk, vocab]`` float32 block at a time plus the ``[tokens]`` log-sum-exp, instead of
    ``[tokens, vocab]`` logits saved for backward.

    Backward recomputes the logits that the forward's log-sum-exp was taken over, so both must run in the
    same precision: :func:`chunked_token_logps` applies ``custom_fwd``/``custom_bwd`` semantics by hand
    (backward re-enters the autocast state the forward saw), instead of relying on backward happening to
    run under the same autocast. The weight gradient ``g^T h`` is a ``[vocab, hidden]`` GEMM over all tokens,
    about a fifth of a 0.5B model's step if done in float32: it runs in the weight's dtype (bf16 under mixed
    precision: tensor cores) and accumulates into a float32 buffer across chunks.
    """

    # ctx is torch's per-call context object (torch types it Any): it holds what forward stores on it
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, targets: torch.Tensor, chunk_size: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = _device_type(hidden)
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        n = hidden.shape[0]
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse_all = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            logits = _chunk_logits(hidden[start:end], weight, bias)
            lse = torch.logsumexp(logits, dim=-1)
            lse_all[start:end] = lse
            logps[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1) - lse
            probs = torch.exp(logits - lse[:, None])
            entropy[start:end] = lse - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse_all)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor, _grad_entropy: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        dev, enabled, dtype = ctx.autocast
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return _ChunkedLogps._backward(ctx, grad_logps)

    @staticmethod
    def _backward(ctx: Any, grad_logps: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, lse_all = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden.shape[0])
            h = hidden[start:end]
            logits = _chunk_logits(h, weight, bias)
            # d logp_t / d logits = onehot(target) - softmax(logits)
            g = -torch.exp(logits - lse_all[start:end, None])
            g.scatter_add_(1, targets[start:end, None], torch.ones_like(g[:, :1]))
            g = g * grad_logps[start:end, None]
            # both GEMMs in the dtype the forward's logits GEMM ran in (bf16 under autocast: tensor cores)
            gemm = logits_dtype(h, weight)
            g_low = g.to(gemm)
            if grad_h is not None:
                grad_h[start:end] = (g_low @ weight.to(gemm)).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (g_low.t() @ h.to(gemm)).float()
            if grad_b is not None:
                grad_b += g.sum(0)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
        )


def chunked_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of ``targets`` from hidden states.

    Args:
        hidden: ``[tokens, hidden]`` final hidden states of the positions that predict a target.
        weight: ``[vocab, hidden]`` output-layer weight.
        targets: ``[tokens]`` target token ids.
        bias: optional ``[vocab]`` output-layer bias.
        chunk_size: tokens per chunk; bounds the float32 logits block to ``[chunk_size, vocab]``.

    Returns:
        ``(logps, entropy)``, both ``[tokens]`` float32; only ``logps`` carries gradient.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"chunked_token_logps: hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    if chunk_size < 1:
        raise ValueError("chunked_token_logps: chunk_size must be >= 1")
    # torch leaves Function.apply unannotated (its result is what forward returns)
    out: tuple[torch.Tensor, torch.Tensor] = _ChunkedLogps.apply(  # type: ignore[no-untyped-call]
        hidden, weight, bias, targets, chunk_size)
    return out

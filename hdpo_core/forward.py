"""Score sequences: per-sequence summed log-probs (and entropy) of completion tokens from a TokenBatch.

:class:`SequenceScorer` is the module that accelerate/DDP wrap, so that gradient synchronisation sees a
normal ``forward``. It runs the model's backbone once over the (padded or packed) rows, keeps only the hidden
states of positions that predict a completion token, and sends those through the output layer in chunks
(:func:`hdpo_core.logps.chunked_token_logps`), so neither prompt nor padding positions ever reach the
``[tokens, vocab]`` projection.

Under LoRA the reference is the same module with the adapter switched off (``reference_mode``), so there is
no second copy of the weights; under full fine-tuning the reference is a frozen copy wrapped the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .batching import TokenBatch
from .logps import chunked_token_logps


@dataclass(frozen=True)
class SequenceScores:
    """Per-sequence results, each ``[num_seqs]`` (sequence ``2i`` chosen, ``2i+1`` rejected of pair ``i``).

    ``logps`` carries gradient when computed with grad enabled; ``entropy_sum`` (nats, summed over the
    completion tokens) and ``token_counts`` never do.
    """

    logps: torch.Tensor
    entropy_sum: torch.Tensor
    token_counts: torch.Tensor

    @property
    def chosen(self) -> torch.Tensor:
        return self.logps[0::2]

    @property
    def rejected(self) -> torch.Tensor:
        return self.logps[1::2]


def _unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers ``*ForCausalLM`` inside a peft wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class SequenceScorer(nn.Module):
    """Wraps a causal LM (or a peft model around one) to produce :class:`SequenceScores`.

    Args:
        model: a transformers causal LM or a ``peft.PeftModel``.
        chunk_size: tokens per output-layer chunk.
    """

    def __init__(self, model: nn.Module, *, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @property
    def causal_lm(self) -> nn.Module:
        return _unwrap_causal_lm(self.model)

    @contextlib.contextmanager
    def reference_mode(self) -> Iterator[None]:
        """Context in which this scorer computes the LoRA reference (adapter disabled)."""
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            raise RuntimeError("reference_mode needs a peft model; full fine-tuning uses a frozen copy")
        with disable():
            yield

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                target_ids: torch.Tensor, target_seq: torch.Tensor, num_seqs: int) -> tuple[torch.Tensor, ...]:
        """Returns ``(logps, entropy_sum, token_counts)``, each ``[num_seqs]`` (see :class:`SequenceScores`)."""
        lm = self.causal_lm
        backbone = getattr(lm, lm.base_model_prefix)
        if attention_mask.dim() == 4 and getattr(lm.config, "_attn_implementation", "sdpa") == "eager":
            # eager attention adds the mask to the scores: turn the boolean block mask into 0 / -inf
            dtype = next(lm.parameters()).dtype
            attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device
                                         ).masked_fill(~attention_mask, torch.finfo(dtype).min)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # [rows, T, H]
        valid = target_ids.ne(-100)
        h = hidden[valid]  # [N, H]
        targets = target_ids[valid]  # [N]
        seq = target_seq[valid]  # [N]
        head = lm.get_output_embeddings()
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        if isinstance(head, nn.Linear) and not softcap and type(head).forward is nn.Linear.forward:
            token_logps, token_entropy = chunked_token_logps(h, head.weight, targets, bias=head.bias,
                                                             chunk_size=self.chunk_size)
        else:  # exotic heads (soft-capping, LoRA on lm_head): plain path on the selected positions only
            logits = head(h).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            logp = torch.log_softmax(logits, dim=-1)
            token_logps = logp.gather(1, targets[:, None]).squeeze(1)
            token_entropy = -(logp.exp() * logp).sum(-1).detach()
        zeros = torch.zeros(num_seqs, dtype=torch.float32, device=h.device)
        logps = zeros.index_add(0, seq, token_logps)
        entropy = zeros.index_add(0, seq, token_entropy.detach())
        counts = torch.zeros(num_seqs, dtype=torch.long, device=h.device).index_add(0, seq, torch.ones_like(seq))
        return logps, entropy, counts


def score(scorer: nn.Module, batch: TokenBatch) -> SequenceScores:
    """Run a (possibly accelerate-wrapped) :class:`SequenceScorer` on a batch."""
    logps, entropy, counts = scorer(batch.input_ids, batch.position_ids, batch.attention_mask,
                                    batch.target_ids, batch.target_seq, 2 * batch.num_pairs)
    return SequenceScores(logps=logps, entropy_sum=entropy, token_counts=counts)

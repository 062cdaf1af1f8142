"""Score sequences: per-sequence summed log-probs (and entropy) of completion tokens from a TokenBatch.

:class:`SequenceScorer` is the module that accelerate/DDP wrap, so that gradient synchronisation sees a
normal ``forward``. It runs the model's backbone once over the (padded or packed) rows, keeps only the hidden
states of positions that predict a completion token, and sends those through the output layer in chunks
(:func:`hdpo_core.logps.chunked_token_logps`), so neither prompt nor padding positions ever reach the
``[tokens, vocab]`` projection.

Packed batches (:func:`hdpo_core.batching.packed_batch`) carry a ``segments`` layout: attention then runs per
segment (:func:`segment_attention`), so there is no ``[T, T]`` mask and no attention across pairs, and a pair's
prompt is computed once for both completions. The segment kernel is installed as a thin wrapper around
transformers' ``sdpa`` entry that only acts when the forward passes ``hdpo_segments`` (the wrapper survives
gradient-checkpoint recomputation, which a temporary config switch would not). Models not known to route
attention through that entry (or using sliding windows / soft-capping) get the same layout as an explicit
4D boolean mask instead, which is slower but exact.

Under LoRA the reference is the same module with the adapter switched off (``reference_mode``), so there is
no second copy of the weights; under full fine-tuning the reference is a frozen copy wrapped the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .batching import TokenBatch, to_device
from .logps import chunked_token_logps

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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


SEGMENTS_KWARG = "hdpo_segments"
# families whose attention calls ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, mask, **kwargs) (tested: llama, qwen2)
_SEGMENT_FAMILIES = {"llama", "qwen2", "qwen3", "mistral"}
_installed: dict[str, object] = {}


def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      segments: tuple[tuple[int, int, int, int, int], ...], *, scaling: float | None = None,
                      dropout: float = 0.0) -> torch.Tensor:
    """Attention within each segment of packed rows.

    Args:
        query: ``[rows, Hq, T, D]``; key, value: ``[rows, Hkv, T, D]`` (grouped-query heads are repeated).
        segments: ``(row, start, prefix, a, b)`` per segment, in row and position order (see TokenBatch):
            ``prefix + a`` tokens are causal; the ``b`` tokens after them see the prefix and themselves only.

    Returns:
        ``[rows, T, Hq, D]`` (transformers' attention output layout); positions outside segments are zero.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    rows, heads, width, dim = query.shape
    masks = _branch_masks(segments, query.device)
    out_rows = []
    # 4D [1, H, L, D] inputs keep sdpa on its fused CPU/GPU kernels (3D falls back to the math path), and
    # unbind/split (not slicing) keep the backward to one concatenation instead of a full-size copy per slice;
    # prefix and branch a are adjacent, so their causal block is one split piece (no concatenation)
    for row, (q_r, k_r, v_r) in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0), strict=True)):
        segs = [(i, s) for i, s in enumerate(segments) if s[0] == row]
        sizes: list[int] = []
        cursor = 0
        for _, (_, start, prefix, a, b) in segs:
            sizes += [start - cursor, prefix + a, b]
            cursor = start + prefix + a + b
        sizes.append(width - cursor)
        qs, ks, vs = (t.unsqueeze(0).split(sizes, dim=2) for t in (q_r, k_r, v_r))
        pieces = []
        for n, (i, (_, _, prefix, _, b)) in enumerate(segs):
            gap, pa, b_ = 3 * n, 3 * n + 1, 3 * n + 2
            if sizes[gap]:
                pieces.append(qs[gap].new_zeros(1, heads, sizes[gap], dim))
            pieces.append(F.scaled_dot_product_attention(qs[pa], ks[pa], vs[pa], is_causal=True, dropout_p=dropout,
                                                         scale=scaling))
            if b:
                # query i of the branch sees the prefix and branch tokens 0..i: bottom-right aligned causal
                pieces.append(F.scaled_dot_product_attention(
                    qs[b_], torch.cat([ks[pa][:, :, :prefix], ks[b_]], dim=2),
                    torch.cat([vs[pa][:, :, :prefix], vs[b_]], dim=2), attn_mask=masks[i], dropout_p=dropout,
                    scale=scaling))
        if sizes[-1]:
            pieces.append(query.new_zeros(1, heads, sizes[-1], dim))
        out_rows.append(torch.cat(pieces, dim=2))
    return torch.cat(out_rows).transpose(1, 2).contiguous()  # [rows, T, H, D]


_MASKS: dict[tuple[object, ...], dict[int, torch.Tensor]] = {}


def _branch_masks(segments: tuple[tuple[int, int, int, int, int], ...], device: torch.device
                  ) -> dict[int, torch.Tensor]:
    """Segment index -> the ``[b, prefix + b]`` boolean mask of its second branch, built once per batch (every
    layer, and a checkpointed layer's recomputation, reuses them instead of launching two kernels per pair)."""
    key = (segments, str(device))
    if key not in _MASKS:
        _MASKS.clear()  # one batch at a time: the masks of the previous batch are dropped
        _MASKS[key] = {i: to_device(torch.ones(b, prefix + b, dtype=torch.bool).tril(diagonal=prefix), device)
                       for i, (_, _, prefix, _, b) in enumerate(segments) if b}
    return _MASKS[key]


def _install_segment_attention() -> None:
    """Wrap transformers' global ``sdpa`` attention entry: segment attention when ``hdpo_segments`` is passed,
    the original function otherwise (idempotent)."""
    if "sdpa" in _installed:
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa_or_segments(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        segments = kwargs.pop(SEGMENTS_KWARG, None)
        if segments is None:
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        return segment_attention(query, key, value, segments, scaling=scaling, dropout=dropout), None

    ALL_ATTENTION_FUNCTIONS.register("sdpa", sdpa_or_segments)
    _installed["sdpa"] = original


def supports_segment_attention(lm: PreTrainedModel) -> bool:
    """True when ``lm``'s attention goes through the wrapped sdpa entry with no sliding window/soft-capping."""
    cfg = lm.config
    sliding = "sliding_attention" in (getattr(cfg, "layer_types", None) or []) or getattr(cfg, "use_sliding_window", False)
    return (cfg.model_type in _SEGMENT_FAMILIES and getattr(cfg, "_attn_implementation", None) == "sdpa"
            and not sliding and not getattr(cfg, "attn_logit_softcapping", None))


def segments_to_mask(segments: tuple[tuple[int, int, int, int, int], ...], rows: int, width: int,
                     device: torch.device | None = None) -> torch.Tensor:
    """The ``[rows, 1, T, T]`` boolean mask equivalent to ``segments`` (fallback and tests)."""
    mask = torch.zeros(rows, width, width, dtype=torch.bool)  # built on the host: no per-segment device work
    for row, start, prefix, a, b in segments:
        end = start + prefix + a
        mask[row, start:end, start:end] = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        if b:
            mask[row, end:end + b, start:start + prefix] = True
            mask[row, end:end + b, end:end + b] = torch.ones(b, b, dtype=torch.bool).tril()
    # padding rows attend to themselves so softmax stays finite (their outputs are never scored)
    idle = ~mask.any(-1)
    mask[idle.nonzero(as_tuple=True) + (idle.nonzero(as_tuple=True)[1],)] = True
    return to_device(mask[:, None], device) if device is not None else mask[:, None]


def uses_segment_kernel(model: nn.Module) -> bool:
    """Whether packed batches for ``model`` (a causal LM or a peft model) run on the segment kernel, where the
    row layout costs nothing: then the whole micro-batch goes in ONE row (no padding at all). Otherwise
    (eager attention, other families) rows stay bounded because the fallback mask is ``[rows, 1, T, T]``."""
    return supports_segment_attention(unwrap_causal_lm(model))


def unwrap_causal_lm(model: nn.Module) -> PreTrainedModel:
    """The transformers ``*ForCausalLM`` inside a peft wrapper (LoRA layers stay injected), or ``model`` itself.

    The scorer is given a causal LM or a peft model around one (:func:`hdpo_core.model.build_policy_and_reference`);
    peft types its ``get_base_model`` as a plain module, so the causal LM's type is stated here, once."""
    get_base = getattr(model, "get_base_model", None)
    return cast("PreTrainedModel", get_base() if callable(get_base) else model)


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
    def causal_lm(self) -> PreTrainedModel:
        return unwrap_causal_lm(self.model)

    @property
    def _no_split_modules(self) -> list[str]:
        """The decoder-layer classes, so accelerate's FSDP2 auto-wrap shards per layer (without it the whole model
        is one unit: memory like DDP). No ``get_output_embeddings`` here on purpose: the output layer stays in
        the root unit, unsharded during the forward where the chunked log-probs read its weight."""
        return list(getattr(self.causal_lm, "_no_split_modules", None) or [])

    @contextlib.contextmanager
    def reference_mode(self) -> Iterator[None]:
        """Context in which this scorer computes the LoRA reference (adapter disabled)."""
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            raise RuntimeError("reference_mode needs a peft model; full fine-tuning uses a frozen copy")
        with disable():
            yield

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                target_ids: torch.Tensor, target_seq: torch.Tensor, num_seqs: int,
                segments: tuple[tuple[int, int, int, int, int], ...] | None = None,
                score_pos: torch.Tensor | None = None, score_tgt: torch.Tensor | None = None,
                score_seq: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Returns ``(logps, entropy_sum, token_counts)``, each ``[num_seqs]`` (see :class:`SequenceScores`).

        With ``segments`` (packed layout) the scored positions come from ``score_pos/score_tgt/score_seq``.
        """
        lm = self.causal_lm
        backbone = getattr(lm, lm.base_model_prefix)
        extra = {}
        if segments is not None:
            if supports_segment_attention(lm):
                _install_segment_attention()
                extra[SEGMENTS_KWARG] = segments
                # an already-4D mask is passed through untouched; the segment kernel ignores it
                attention_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=input_ids.device)
            else:
                attention_mask = segments_to_mask(segments, input_ids.shape[0], input_ids.shape[1],
                                                  device=input_ids.device)
        if attention_mask.dim() == 4 and not extra and getattr(lm.config, "_attn_implementation", "sdpa") == "eager":
            # eager attention adds the mask to the scores: turn the boolean block mask into 0 / -inf
            dtype = next(lm.parameters()).dtype
            attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device
                                         ).masked_fill(~attention_mask, torch.finfo(dtype).min)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, **extra).last_hidden_state  # [rows, T, H]
        if score_pos is not None:
            assert score_tgt is not None and score_seq is not None  # a packed batch carries all three
            h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, score_pos)  # [N, H]
            targets, seq = score_tgt, score_seq
        else:  # boolean indexing: a host sync on a GPU (batches from hdpo_core.batching carry score_pos)
            valid = target_ids.ne(-100)
            h, targets, seq = hidden[valid], target_ids[valid], target_seq[valid]  # [N, H], [N], [N]
        token_logps, token_entropy = output_logps(lm, h, targets, self.chunk_size)
        zeros = torch.zeros(num_seqs, dtype=torch.float32, device=h.device)
        logps = zeros.index_add(0, seq, token_logps)
        entropy = zeros.index_add(0, seq, token_entropy.detach())
        counts = torch.zeros(num_seqs, dtype=torch.long, device=h.device).index_add(0, seq, torch.ones_like(seq))
        return logps, entropy, counts


def output_logps(lm: PreTrainedModel, h: torch.Tensor, targets: torch.Tensor, chunk_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(logps, entropy)`` of ``targets`` from final hidden states ``h`` ``[N, H]``.

    A plain ``nn.Linear`` head goes through :func:`chunked_token_logps` (reads ``head.weight`` directly). Other
    heads (soft-capping, LoRA on lm_head) and a head whose weight is partitioned by DeepSpeed ZeRO-3 (an empty
    placeholder outside the head's own forward) call the head MODULE, chunk by chunk under activation
    checkpointing: memory stays one ``[chunk, vocab]`` block, and ZeRO-3 gathers the weight in each call.
    """
    head = lm.get_output_embeddings()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    partitioned = getattr(getattr(head, "weight", None), "ds_id", None) is not None
    if isinstance(head, nn.Linear) and not softcap and not partitioned and type(head).forward is nn.Linear.forward:
        return chunked_token_logps(h, head.weight, targets, bias=head.bias, chunk_size=chunk_size)
    from torch.utils.checkpoint import checkpoint

    logps, entropy = [], []
    for start in range(0, h.shape[0], chunk_size):
        lp, ent = checkpoint(_head_chunk, head, h[start:start + chunk_size], targets[start:start + chunk_size],
                             softcap, use_reentrant=False)
        logps.append(lp)
        entropy.append(ent.detach())
    if not logps:
        empty = h.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(entropy)


def _head_chunk(head: nn.Module, h: torch.Tensor, targets: torch.Tensor, softcap: float | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(h).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(1, targets[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def score(scorer: nn.Module, batch: TokenBatch) -> SequenceScores:
    """Run a (possibly accelerate-wrapped) :class:`SequenceScorer` on a batch."""
    extra: dict[str, object] = {}
    if batch.score_pos is not None:
        extra = {"score_pos": batch.score_pos, "score_tgt": batch.score_tgt, "score_seq": batch.score_seq}
    if batch.segments is not None:
        extra["segments"] = batch.segments
    logps, entropy, counts = scorer(batch.input_ids, batch.position_ids, batch.attention_mask,
                                    batch.target_ids, batch.target_seq, 2 * batch.num_pairs, **extra)
    return SequenceScores(logps=logps, entropy_sum=entropy, token_counts=counts)

"""Batched sampling with the KV cache: ``n`` samples per prompt, many prompts at once.

``model.generate`` looped per prompt pays Python and kernel-launch overhead per prompt and per step; here all
``prompts x n`` rows go through one prefill and one decode step per token (in chunks of ``max_batch_size``
rows). Prompts are **left-padded** so every row's next token sits in the last column; ``position_ids`` are
``cumsum(mask) - 1`` so padding does not shift positions (this is what ``generate`` does, and greedy output
matches it token for token: tests/eval/test_sampling.py).

Per generated position we also record the exact entropy of the model's next-token distribution **at
temperature 1** (the model's own distribution, before temperature or top-p), so the "sampled entropy" is a
property of the policy measured on its own samples, comparable across sampling temperatures and models.

Temperature ``0`` means greedy (argmax). Sampling uses one ``torch.Generator`` seeded per call, so results
reproduce for the same seed, prompts, ``max_batch_size`` and device. ``generation_config`` extras of the model
(repetition penalty, top-k, ...) are deliberately ignored: the evaluation controls the sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hdpo_core.compat import cache_kwarg
from hdpo_core.logps import entropy_from_logits


@dataclass(frozen=True)
class Samples:
    """Rows are prompt-major: row ``i*n + j`` is sample ``j`` of prompt ``i``.

    Attributes:
        tokens: generated token ids per row, EOS excluded.
        finished: whether the row stopped at EOS (else it hit ``max_new_tokens``).
        entropy_sum: summed per-position entropy (nats, temperature 1) over the generated positions
            (EOS position included); ``float('nan')`` when the backend cannot compute it.
        entropy_count: positions summed in ``entropy_sum``.
    """

    tokens: list[list[int]]
    finished: list[bool]
    entropy_sum: list[float]
    entropy_count: list[int]


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of ``[rows, vocab]`` logits: keep the smallest set of tokens whose probability mass
    reaches ``top_p`` (the most likely token always stays); the rest become ``-inf``."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, *, temperature: float, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from ``[rows, vocab]`` float32 logits -> ``[rows]``."""
    if temperature <= 0:
        return logits.argmax(-1)
    scaled = logits / temperature
    if top_p is not None and top_p < 1.0:
        scaled = top_p_filter(scaled, top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``[rows, max_len]``, prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if p:
            ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[r, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def _sample_chunk(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, temperature: float,
                  top_p: float | None, max_new_tokens: int, eos_ids: set[int], pad_token_id: int,
                  generator: torch.Generator | None) -> Samples:
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    rows = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [rows, T]
    cache_kw = cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    past = getattr(out, cache_kw)
    logits = out.logits[:, -1, :].float()  # [rows, vocab]
    next_pos = pos[:, -1] + 1  # [rows]
    eos = torch.tensor(sorted(eos_ids), device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    generated = torch.empty((rows, 0), dtype=torch.long, device=device)
    ent_sum = torch.zeros(rows, dtype=torch.float32, device=device)
    ent_cnt = torch.zeros(rows, dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        active = ~done
        ent_sum += torch.where(active, entropy_from_logits(logits), 0.0)
        ent_cnt += active.long()
        tok = next_tokens(logits, temperature=temperature, top_p=top_p, generator=generator)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        generated = torch.cat([generated, tok[:, None]], dim=1)
        done = done | torch.isin(tok, eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    use_cache=True, **{cache_kw: past})
        past = getattr(out, cache_kw)
        logits = out.logits[:, -1, :].float()
        next_pos = next_pos + 1
    tokens: list[list[int]] = []
    finished: list[bool] = []
    for row in generated.tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_ids), None)
        tokens.append(row if cut is None else row[:cut])
        finished.append(cut is not None)
    return Samples(tokens, finished, ent_sum.tolist(), ent_cnt.tolist())


def sample_batched(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, n: int, temperature: float,
                   max_new_tokens: int, eos_token_id: int | Sequence[int], pad_token_id: int,
                   top_p: float | None = None, seed: int = 0, max_batch_size: int = 64) -> Samples:
    """Draw ``n`` samples for each prompt (token ids) with the KV cache.

    Args:
        model: a transformers causal LM (or peft model) in eval mode.
        prompts: token ids per prompt (with the tokenizer's special tokens already added).
        n: samples per prompt; each prompt is repeated ``n`` times as separate rows.
        temperature: ``0`` = greedy; otherwise logits are divided by it before sampling.
        max_new_tokens: generation budget per row.
        eos_token_id: id(s) that end a row.
        pad_token_id: id fed for left padding and for finished rows.
        top_p: nucleus sampling threshold (``None`` = off).
        seed: seeds one ``torch.Generator`` for the whole call.
        max_batch_size: rows per forward pass (prefill and decode).
    """
    if n < 1 or max_new_tokens < 1 or max_batch_size < 1:
        raise ValueError("sample_batched: n, max_new_tokens and max_batch_size must be >= 1")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    rows = [list(p) for p in prompts for _ in range(n)]
    parts: list[Samples] = []
    for start in range(0, len(rows), max_batch_size):
        parts.append(_sample_chunk(model, rows[start:start + max_batch_size], temperature=temperature,
                                   top_p=top_p, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                                   pad_token_id=pad_token_id, generator=generator))
    return Samples(
        tokens=[t for p in parts for t in p.tokens],
        finished=[f for p in parts for f in p.finished],
        entropy_sum=[e for p in parts for e in p.entropy_sum],
        entropy_count=[c for p in parts for c in p.entropy_count],
    )

"""Turn tokenised pairs into model inputs: a padded batch (simple path) or packed rows (fast path).

Both layouts share one description so the forward code has no mode flag: ``target_ids[r, t]`` is the token
that position ``t`` of row ``r`` must predict (``-100`` where nothing is scored: prompt, padding, the last
token of a sequence) and ``target_seq[r, t]`` says which sequence that target belongs to. Sequence ``2i`` is
pair ``i``'s chosen (prompt + chosen completion), ``2i + 1`` its rejected.

Packing places whole sequences side by side in a row, resets ``position_ids`` per sequence and passes an
explicit block-causal 4D boolean mask: with transformers 5 and sdpa/eager attention, resetting position ids
alone does NOT stop a sequence from attending to the one before it (pitfalls.md #1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .logps import IGNORE_INDEX
from .tokenize import TokenizedPair


@dataclass(frozen=True)
class TokenBatch:
    """Model inputs for a micro-batch of pairs.

    Attributes:
        input_ids: ``[rows, T]``.
        position_ids: ``[rows, T]``, restarting at 0 for each sequence.
        attention_mask: ``[rows, T]`` (padded) or ``[rows, 1, T, T]`` bool block-causal (packed).
        target_ids: ``[rows, T]`` next-token targets, ``-100`` where unscored.
        target_seq: ``[rows, T]`` sequence index of each target, ``-1`` where unscored.
        num_pairs: pairs in this micro-batch (sequences = ``2 * num_pairs``).
        num_tokens: real (non-padding) tokens.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_ids: torch.Tensor
    target_seq: torch.Tensor
    num_pairs: int
    num_tokens: int

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(getattr(self, f).to(device) for f in
                            ("input_ids", "position_ids", "attention_mask", "target_ids", "target_seq")),
                          num_pairs=self.num_pairs, num_tokens=self.num_tokens)


def _sequences(pairs: Sequence[TokenizedPair]) -> list[tuple[list[int], int]]:
    """``(tokens, prompt_len)`` for every sequence, chosen then rejected per pair."""
    seqs = []
    for p in pairs:
        seqs.append((list(p.prompt_ids) + list(p.chosen_ids), len(p.prompt_ids)))
        seqs.append((list(p.prompt_ids) + list(p.rejected_ids), len(p.prompt_ids)))
    return seqs


def _place(row_ids, row_pos, row_tgt, row_seq, offset: int, tokens: list[int], prompt_len: int, seq: int) -> None:
    n = len(tokens)
    row_ids[offset:offset + n] = torch.tensor(tokens)
    row_pos[offset:offset + n] = torch.arange(n)
    # position t predicts token t+1; score only completion tokens (index >= prompt_len)
    first = max(prompt_len - 1, 0)
    if n - 1 > first:
        row_tgt[offset + first:offset + n - 1] = torch.tensor(tokens[first + 1:n])
        row_seq[offset + first:offset + n - 1] = seq


def padded_batch(pairs: Sequence[TokenizedPair], pad_token_id: int) -> TokenBatch:
    """One sequence per row, right-padded: the simple path every fast path is tested against."""
    seqs = _sequences(pairs)
    width = max(len(t) for t, _ in seqs)
    rows = len(seqs)
    ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    pos = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    tgt = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    seq = torch.full((rows, width), -1, dtype=torch.long)
    for r, (tokens, plen) in enumerate(seqs):
        _place(ids[r], pos[r], tgt[r], seq[r], 0, tokens, plen, r)
        mask[r, :len(tokens)] = 1
    return TokenBatch(ids, pos, mask, tgt, seq, num_pairs=len(pairs), num_tokens=sum(len(t) for t, _ in seqs))


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of sequence indices into rows of at most ``capacity`` tokens
    (a sequence longer than ``capacity`` gets a row of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        for r, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


def packed_batch(pairs: Sequence[TokenizedPair], pad_token_id: int, *, row_tokens: int) -> TokenBatch:
    """Pack the pairs' sequences into rows of about ``row_tokens`` tokens with a block-causal mask."""
    seqs = _sequences(pairs)
    lengths = [len(t) for t, _ in seqs]
    layout = pack_rows(lengths, max(row_tokens, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in layout)
    rows = len(layout)
    ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    pos = torch.zeros((rows, width), dtype=torch.long)
    tgt = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    seq = torch.full((rows, width), -1, dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)
    for r, row in enumerate(layout):
        offset = 0
        for i in sorted(row):
            tokens, plen = seqs[i]
            _place(ids[r], pos[r], tgt[r], seq[r], offset, tokens, plen, i)
            segment[r, offset:offset + len(tokens)] = i
            offset += len(tokens)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    mask = (same & causal)[:, None, :, :]
    return TokenBatch(ids, pos, mask, tgt, seq, num_pairs=len(pairs), num_tokens=sum(lengths))

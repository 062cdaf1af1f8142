"""Turn tokenised pairs into model inputs: a padded batch (simple path) or packed rows (fast path).

Both layouts share one description so the forward code has no mode flag: ``target_ids[r, t]`` is the token
that position ``t`` of row ``r`` must predict (``-100`` where nothing is scored: prompt, padding, the last
token of a sequence) and ``target_seq[r, t]`` says which sequence that target belongs to. Sequence ``2i`` is
pair ``i``'s chosen (prompt + chosen completion), ``2i + 1`` its rejected.

Packing (:func:`packed_batch`, the fast path) places each pair side by side in a row as ONE segment
``prompt | chosen | rejected``: the prompt is computed once for both completions, the rejected completion sees
the prompt but not the chosen one, and positions restart per pair (rejected continues from the prompt). The
layout is described by ``segments``; :mod:`hdpo_core.forward` runs attention per segment (no ``[T, T]`` mask,
no attention across segments, no work on padding). Position ids alone would NOT isolate sequences with
sdpa/eager attention.

Both layouts also list the scored positions (``score_pos``/``score_tgt``/``score_seq``), computed here on the host,
so the forward selects them with one gather instead of boolean indexing (a host sync on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .logps import IGNORE_INDEX
from .tokenize import TokenizedPair


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host tensor -> ``device`` without a host sync: a plain (pageable) host-to-GPU copy synchronises the
    stream, so on CUDA the tensor is pinned first and copied asynchronously (the caching host allocator keeps
    the pinned buffer alive until the copy is done)."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
        num_tokens: real (non-padding) tokens, counted as prompt+chosen plus prompt+rejected.
        segments: packed layout only, ``(row, start, prefix, branch_a, branch_b)`` per segment: tokens
            ``[start, start+prefix+branch_a)`` are causal; the ``branch_b`` tokens after them see the prefix and
            themselves but not ``branch_a``. A plain sequence is ``(row, start, length, 0, 0)``.
        score_pos: ``[M]`` flat indices into ``[rows*T]`` of the positions that predict a
            scored token (a position may predict two: the last prompt token predicts both completions' first).
        score_tgt: ``[M]`` the predicted token ids.
        score_seq: ``[M]`` their sequence index.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_ids: torch.Tensor
    target_seq: torch.Tensor
    num_pairs: int
    num_tokens: int
    segments: tuple[tuple[int, int, int, int, int], ...] | None = None
    score_pos: torch.Tensor | None = None
    score_tgt: torch.Tensor | None = None
    score_seq: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TokenBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else to_device(t, device)

        return replace(self, input_ids=to_device(self.input_ids, device),
                       position_ids=to_device(self.position_ids, device),
                       attention_mask=to_device(self.attention_mask, device),
                       target_ids=to_device(self.target_ids, device), target_seq=to_device(self.target_seq, device),
                       score_pos=move(self.score_pos), score_tgt=move(self.score_tgt), score_seq=move(self.score_seq))


def _sequences(pairs: Sequence[TokenizedPair]) -> list[tuple[list[int], int]]:
    """``(tokens, prompt_len)`` for every sequence, chosen then rejected per pair."""
    seqs = []
    for p in pairs:
        seqs.append((list(p.prompt_ids) + list(p.chosen_ids), len(p.prompt_ids)))
        seqs.append((list(p.prompt_ids) + list(p.rejected_ids), len(p.prompt_ids)))
    return seqs


def _blank_rows(rows: int, width: int, pad_token_id: int) -> tuple[torch.Tensor, ...]:
    """``(input_ids, position_ids, target_ids, target_seq)`` of ``[rows, width]``, all padding."""
    return (torch.full((rows, width), pad_token_id, dtype=torch.long), torch.zeros((rows, width), dtype=torch.long),
            torch.full((rows, width), IGNORE_INDEX, dtype=torch.long), torch.full((rows, width), -1, dtype=torch.long))


def _place(row_ids: torch.Tensor, row_pos: torch.Tensor, row_tgt: torch.Tensor, row_seq: torch.Tensor, offset: int,
           tokens: list[int], prompt_len: int, seq: int) -> None:
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
    ids, pos, tgt, seq = _blank_rows(rows, width, pad_token_id)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, (tokens, plen) in enumerate(seqs):
        _place(ids[r], pos[r], tgt[r], seq[r], 0, tokens, plen, r)
        mask[r, :len(tokens)] = 1
    flat = tgt.reshape(-1).ne(IGNORE_INDEX).nonzero().squeeze(1)  # host tensors: row-major, as hidden[valid]
    return TokenBatch(ids, pos, mask, tgt, seq, num_pairs=len(pairs), num_tokens=sum(len(t) for t, _ in seqs),
                      score_pos=flat, score_tgt=tgt.reshape(-1)[flat], score_seq=seq.reshape(-1)[flat])


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


def packed_batch(pairs: Sequence[TokenizedPair], pad_token_id: int, *, row_tokens: int,
                 share_prompt: bool = False) -> TokenBatch:
    """The fast path: each pair is one segment ``prompt|chosen|rejected`` (prompt computed once), segments
    packed first-fit-decreasing into rows of about ``row_tokens`` tokens; see :class:`TokenBatch` ``segments``.

    With ``share_prompt=False`` (or an empty prompt/completion) the two sequences of a pair are separate
    segments, each with positions from 0; with ``share_prompt=True`` the prompt is computed once (the fast
    setting; the trainer should pass it).
    ``attention_mask`` is ``[rows, T]`` (1 on real tokens) and must not be used alone: the forward isolates
    segments itself.
    """
    units: list[list[tuple[list[int], int, int, int]]] = []  # per pair: (tokens, prefix, a, b) segments
    for p in pairs:
        prompt, chosen, rejected = list(p.prompt_ids), list(p.chosen_ids), list(p.rejected_ids)
        if share_prompt and prompt and chosen and rejected:
            units.append([(prompt + chosen + rejected, len(prompt), len(chosen), len(rejected))])
        else:
            units.append([(prompt + chosen, len(prompt + chosen), 0, 0),
                          (prompt + rejected, len(prompt + rejected), 0, 0)])
    lengths = [sum(len(t) for t, *_ in u) for u in units]
    layout = pack_rows(lengths, max(row_tokens, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in layout)
    rows = len(layout)
    ids, pos, tgt, seq = _blank_rows(rows, width, pad_token_id)
    real = torch.zeros((rows, width), dtype=torch.long)
    segments: list[tuple[int, int, int, int, int]] = []
    s_pos: list[int] = []
    s_tgt: list[int] = []
    s_seq: list[int] = []

    def score(flat: int, tokens: list[int], first: int, last: int, token_offset: int, sq: int) -> None:
        """Positions ``flat+first-1 .. flat+last-2`` predict ``tokens[first .. last-1]`` (token_offset shifts)."""
        for k in range(first, last):
            s_pos.append(flat + token_offset + k - 1)
            s_tgt.append(tokens[k])
            s_seq.append(sq)

    for r, row in enumerate(layout):
        offset = 0
        for i in sorted(row):
            for j, (tokens, prefix, a, b) in enumerate(units[i]):
                n = len(tokens)
                flat = r * width + offset
                ids[r, offset:offset + n] = torch.tensor(tokens)
                real[r, offset:offset + n] = 1
                segments.append((r, offset, prefix, a, b))
                if a == 0 and b == 0:  # one plain sequence (chosen if j == 0 else rejected)
                    pos[r, offset:offset + n] = torch.arange(n)
                    plen = len(pairs[i].prompt_ids)
                    score(flat, tokens, max(plen, 1), n, 0, 2 * i + j)
                else:  # prompt | chosen | rejected; both completions continue the prompt's positions
                    pos[r, offset:offset + prefix + a] = torch.arange(prefix + a)
                    pos[r, offset + prefix + a:offset + n] = torch.arange(prefix, prefix + b)
                    score(flat, tokens, prefix, prefix + a, 0, 2 * i)
                    # rejected: its first token is predicted by the last prompt position
                    s_pos.append(flat + prefix - 1)
                    s_tgt.append(tokens[prefix + a])
                    s_seq.append(2 * i + 1)
                    score(flat, tokens, prefix + a + 1, n, 0, 2 * i + 1)
                offset += n
    for p_, t_, q_ in zip(s_pos, s_tgt, s_seq, strict=True):  # per-position view (the branch point keeps chosen)
        row_, col = divmod(p_, width)
        if tgt[row_, col] == IGNORE_INDEX:
            tgt[row_, col] = t_
            seq[row_, col] = q_
    num_tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return TokenBatch(ids, pos, real, tgt, seq, num_pairs=len(pairs), num_tokens=num_tokens,
                      segments=tuple(segments), score_pos=torch.tensor(s_pos, dtype=torch.long),
                      score_tgt=torch.tensor(s_tgt, dtype=torch.long), score_seq=torch.tensor(s_seq, dtype=torch.long))

"""Packed rows with a block-causal mask equal one padded sequence per row (values and gradients)."""

import pytest
import torch

from hdpo_core.batching import pack_rows, packed_batch, padded_batch
from hdpo_core.forward import SequenceScorer, score
from hdpo_core.logps import sequence_logps

from ._tiny import PAD, random_pairs, tiny_llama


def _labels(batch):
    """Back from next-token targets to sequence_logps' labels form (label at t+1 = target at t)."""
    lab = torch.full_like(batch.input_ids, -100)
    lab[:, 1:] = batch.target_ids[:, :-1]
    return lab


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_chunked_equals_padded_full_logits(attn):
    model = tiny_llama(attn=attn).eval()
    pairs = random_pairs(5, seed=3)
    packed = packed_batch(pairs, PAD, row_tokens=40)
    padded = padded_batch(pairs, PAD)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # really packed several per row
    with torch.no_grad():
        logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits
        simple, counts = sequence_logps(logits, _labels(padded))
        scorer = SequenceScorer(model, chunk_size=7)
        fast = score(scorer, packed)
    torch.testing.assert_close(fast.logps, simple, atol=1e-5, rtol=0)
    assert fast.token_counts.tolist() == counts.tolist()
    assert fast.token_counts.tolist()[0] == len(pairs[0].chosen_ids)
    from hdpo_core.logps import entropy_from_logits

    ent = entropy_from_logits(logits[:, :-1])
    mask = _labels(padded)[:, 1:] != -100
    torch.testing.assert_close(fast.entropy_sum, (ent * mask).sum(-1), atol=1e-4, rtol=0)


def test_packed_gradients_equal_padded():
    pairs = random_pairs(4, seed=5)
    grads = []
    for batch in (padded_batch(pairs, PAD), packed_batch(pairs, PAD, row_tokens=64)):
        model = tiny_llama(seed=1)
        s = score(SequenceScorer(model, chunk_size=5), batch)
        (s.logps * torch.linspace(-1, 1, s.logps.numel())).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_position_ids_alone_leak_across_sequences():
    """Why the block mask exists: reset positions with a plain mask let sequence 2 see sequence 1."""
    model = tiny_llama().eval()
    pairs = random_pairs(2, seed=9)
    packed = packed_batch(pairs, PAD, row_tokens=200)
    assert packed.input_ids.shape[0] == 1
    leaky = packed.__class__(packed.input_ids, packed.position_ids, torch.ones_like(packed.input_ids),
                             packed.target_ids, packed.target_seq, packed.num_pairs, packed.num_tokens)
    with torch.no_grad():
        good = score(SequenceScorer(model), packed).logps
        bad = score(SequenceScorer(model), leaky).logps
    assert (good - bad).abs().max() > 1e-3


def test_pack_rows_respects_capacity_and_keeps_every_sequence():
    lengths = [5, 9, 3, 7, 2, 8, 1]
    rows = pack_rows(lengths, capacity=10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 4  # 35 tokens need at least 4 rows of 10
    assert pack_rows([12, 3], capacity=10) == [[0], [1]]  # over-long sequence alone


def test_position_ids_restart_per_sequence():
    pairs = random_pairs(3, seed=2)
    b = packed_batch(pairs, PAD, row_tokens=100)
    starts = (b.position_ids == 0) & (b.input_ids != PAD)
    assert int(starts.sum()) == 6  # one start per sequence
    shared = packed_batch(pairs, PAD, row_tokens=100, share_prompt=True)
    starts = (shared.position_ids == 0) & (shared.input_ids != PAD)
    assert int(starts.sum()) == 3  # one start per pair: the prompt is stored once
    assert shared.num_tokens == b.num_tokens  # throughput counts both full sequences either way

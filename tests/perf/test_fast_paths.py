"""Fast paths equal the simple path: segment-packed (with and without prompt sharing) vs padded full logits,
values within 1e-5 and gradients within tolerance; the mask fallback equals the segment kernel."""

import pytest
import torch

from hdpo_core.batching import packed_batch, padded_batch
from hdpo_core.forward import SequenceScorer, score, segment_attention, segments_to_mask
from hdpo_core.logps import entropy_from_logits, sequence_logps
from tests.core._tiny import PAD, random_pairs, tiny_llama


def _simple(model, pairs):
    """Full-vocabulary logits on a padded batch: the reference implementation."""
    b = padded_batch(pairs, PAD)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    labels = torch.full_like(b.input_ids, -100)
    labels[:, 1:] = b.target_ids[:, :-1]
    logps, counts = sequence_logps(logits, labels)
    ent = (entropy_from_logits(logits[:, :-1]) * (labels[:, 1:] != -100)).sum(-1)
    return logps, counts, ent


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # eager: no segment kernel, the 4D mask fallback
def test_packed_equals_padded_values(share, attn):
    model = tiny_llama(attn=attn).eval()
    pairs = random_pairs(6, seed=4)
    batch = packed_batch(pairs, PAD, row_tokens=50, share_prompt=share)
    assert batch.input_ids.shape[0] > 1  # several rows, several segments per row
    with torch.no_grad():
        logps, counts, ent = _simple(model, pairs)
        fast = score(SequenceScorer(model, chunk_size=7), batch)
    torch.testing.assert_close(fast.logps, logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.entropy_sum, ent, atol=1e-4, rtol=0)
    assert fast.token_counts.tolist() == counts.tolist()
    assert batch.num_tokens == padded_batch(pairs, PAD).num_tokens


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_trainer_batcher_uses_one_unpadded_row_with_the_segment_kernel(attn):
    """With the segment kernel the trainer packs a micro-batch into ONE row (rows padded to the longest row
    would compute padding); with the mask fallback rows stay bounded by row_tokens. Same numbers either way."""
    from hdpo_core.trainer import TrainOptions, make_batcher

    model = tiny_llama(attn=attn).eval()
    pairs = random_pairs(6, seed=4)
    opts = TrainOptions(total_steps=1, batch_size=6, micro_batch_size=6, learning_rate=1e-3, row_tokens=50)
    batch = make_batcher(opts, PAD, model)(pairs)
    computed = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    if attn == "sdpa":
        assert batch.input_ids.shape == (1, computed)  # no padding position at all
    else:
        assert batch.input_ids.shape[0] > 1 and batch.input_ids.shape[1] <= 50
    with torch.no_grad():
        logps, _, ent = _simple(model, pairs)
        fast = score(SequenceScorer(model, chunk_size=7), batch)
    torch.testing.assert_close(fast.logps, logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.entropy_sum, ent, atol=1e-4, rtol=0)


def test_prompt_sharing_computes_the_prompt_once():
    pairs = random_pairs(5, seed=1)
    shared = packed_batch(pairs, PAD, row_tokens=10_000, share_prompt=True)
    plain = packed_batch(pairs, PAD, row_tokens=10_000, share_prompt=False)
    prompts = sum(len(p.prompt_ids) for p in pairs)
    assert int(plain.attention_mask.sum()) - int(shared.attention_mask.sum()) == prompts


@pytest.mark.parametrize("share", [True, False])
def test_packed_gradients_equal_padded(share):
    pairs = random_pairs(5, seed=7)
    weights = torch.linspace(-1, 1, 10)
    grads = []
    for mode in ("padded", "packed"):
        model = tiny_llama(seed=2)
        if mode == "padded":
            logps, _, _ = _simple(model, pairs)
        else:
            logps = score(SequenceScorer(model, chunk_size=5),
                          packed_batch(pairs, PAD, row_tokens=40, share_prompt=share)).logps
        (logps * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_segment_kernel_equals_mask_attention():
    torch.manual_seed(0)
    segments = ((0, 0, 3, 4, 5), (0, 12, 4, 0, 0), (1, 0, 2, 2, 3), (1, 9, 4, 0, 0))
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    fast = segment_attention(q, k, v, segments)  # [rows, T, H, D]
    mask = segments_to_mask(segments, 2, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    covered = torch.zeros(2, 16, dtype=torch.bool)
    for row, start, prefix, a, b in segments:
        covered[row, start:start + prefix + a + b] = True
    torch.testing.assert_close(fast[covered], ref[covered], atol=1e-6, rtol=0)
    assert fast[~covered].abs().sum() == 0  # gaps and row padding stay zero
    assert int((~covered).sum()) == 5


def test_gradient_checkpointing_keeps_segment_path_exact():
    """Checkpoint recomputation re-enters attention in backward; the segment kernel must be used there too."""
    pairs = random_pairs(4, seed=3)
    grads = []
    for ckpt in (False, True):
        model = tiny_llama(seed=5)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        s = score(SequenceScorer(model), packed_batch(pairs, PAD, row_tokens=64, share_prompt=True))
        (s.logps * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)

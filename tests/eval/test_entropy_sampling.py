import math

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from hdpo_core.eval.sampling import left_pad, sample_batched, top_p_filter
from hdpo_core.logps import entropy_from_logits


def test_entropy_from_logits_three_token_vocab_by_hand():
    # logits ln([1, 2, 1]) -> p = [0.25, 0.5, 0.25]; H = -(2 * 0.25 ln 0.25 + 0.5 ln 0.5) = 1.5 ln 2
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]])) + 3.0  # a shift changes nothing
    h = entropy_from_logits(logits)
    assert h[0].item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert h[1].item() == pytest.approx(math.log(3), abs=1e-6)
    assert entropy_from_logits(torch.tensor([0.0, -1e4, -1e4])).item() == pytest.approx(0.0, abs=1e-6)


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]]


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_model(len(tok)), tok


def _prompts(tok):
    return [tok(p)["input_ids"] for p in ["Q: 1+1=", "Q: 23+45=", "hi", "Q: 100-7="]]


def test_greedy_batched_equals_generate_per_prompt(tiny):
    model, tok = tiny
    prompts = _prompts(tok)  # different lengths: rows are left-padded in the batch
    samples = sample_batched(model, prompts, n=2, temperature=0.0, max_new_tokens=10,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_batch_size=8)
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[:ref.index(tok.eos_token_id)]
        assert samples.tokens[2 * i] == ref
        assert samples.tokens[2 * i + 1] == ref
    assert left_pad(prompts, 0)[1].sum().item() == sum(len(p) for p in prompts)


def test_sampling_reproducible_and_entropy_finite(tiny):
    model, tok = tiny
    kw = {"n": 4, "temperature": 1.0, "max_new_tokens": 8, "eos_token_id": tok.eos_token_id,
              "pad_token_id": tok.pad_token_id, "max_batch_size": 6}
    a = sample_batched(model, _prompts(tok), seed=3, **kw)
    b = sample_batched(model, _prompts(tok), seed=3, **kw)
    c = sample_batched(model, _prompts(tok), seed=4, **kw)
    assert a == b
    assert a.tokens != c.tokens
    per_token = [s / n for s, n in zip(a.entropy_sum, a.entropy_count, strict=True)]
    assert all(math.isfinite(x) and 0 < x <= math.log(len(tok)) + 1e-5 for x in per_token)
    assert len(a.tokens) == 16 and all(len(t) <= 8 for t in a.tokens)


def test_sampled_entropy_matches_teacher_forced_recompute(tiny):
    """The entropy recorded while sampling equals the entropy of the model's distribution re-computed by one
    full forward over prompt + sampled tokens (position by position)."""
    model, tok = tiny
    prompt = tok("Q: 7+8=")["input_ids"]
    s = sample_batched(model, [prompt], n=1, temperature=1.0, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, seed=0)
    full = torch.tensor([prompt + s.tokens[0]])
    with torch.no_grad():
        logits = model(full).logits[0, len(prompt) - 1:]
    expected = entropy_from_logits(logits)[: s.entropy_count[0]].sum().item()
    assert s.entropy_sum[0] == pytest.approx(expected, rel=1e-4)

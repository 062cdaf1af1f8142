"""Log-prob gathering (label shift, masking) and the chunked fast path against the full-logits path."""

import math

import pytest
import torch

from hdpo_core.logps import chunked_token_logps, entropy_from_logits, sequence_logps


def test_sequence_logps_known_values_and_masking():
    # vocab 4; logits at position t put log-prob log(0.7) on token (t+1) % 4 and log(0.1) elsewhere
    probs = torch.full((1, 5, 4), 0.1)
    for t in range(5):
        probs[0, t, (t + 1) % 4] = 0.7
    logits = probs.log()
    labels = torch.tensor([[-100, -100, 3, 0, 2]])  # positions 2..4 labelled; position 1 predicts token 2
    logps, counts = sequence_logps(logits, labels)
    # targets: pos1->label[2]=3 ((1+1)%4=2 -> 0.1), pos2->label[3]=0 (3%4=3 -> 0.1), pos3->label[4]=2 (0 -> 0.1)
    assert counts.tolist() == [3]
    assert logps.item() == pytest.approx(3 * math.log(0.1), abs=1e-5)
    labels2 = torch.tensor([[-100, -100, 2, 3, 0]])  # now every target is the 0.7 token
    assert sequence_logps(logits, labels2)[0].item() == pytest.approx(3 * math.log(0.7), abs=1e-5)


def test_prompt_and_padding_contribute_exactly_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[-100, -100, 4, 5, -100, -100], [-100, 1, 2, 3, 4, 5]])
    base = sequence_logps(logits, labels)[0]
    noisy = logits.clone()
    noisy[0, 0] += 100.0  # predicts the prompt token at 1
    noisy[0, 4:] = torch.randn(2, 11, generator=g) * 50  # padding positions
    torch.testing.assert_close(sequence_logps(noisy, labels)[0], base, atol=0, rtol=0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


def test_entropy_three_token_vocab():
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    logits = torch.tensor([0.5, 0.25, 0.25]).log() + 3.0
    assert entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    assert entropy_from_logits(torch.zeros(3)).item() == pytest.approx(math.log(3), abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_equals_full_values_and_gradients(chunk, with_bias):
    g = torch.Generator().manual_seed(chunk)
    n, h, v = 23, 8, 37
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)

    logps, ent = chunked_token_logps(hidden, weight, targets, bias=bias, chunk_size=chunk)
    (logps * upstream).sum().backward()
    fast = [t.grad.clone() for t in (hidden, weight, bias) if t is not None]
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None

    logits = hidden @ weight.t() + (bias if bias is not None else 0)
    full = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    (full * upstream).sum().backward()
    slow = [t.grad for t in (hidden, weight, bias) if t is not None]
    torch.testing.assert_close(logps, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, entropy_from_logits(logits.detach()), atol=1e-5, rtol=0)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_frozen_weight_gets_no_gradient():
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    logps, _ = chunked_token_logps(hidden, weight, torch.tensor([0, 1, 2, 3, 8]), chunk_size=2)
    logps.sum().backward()
    assert hidden.grad is not None and weight.grad is None

"""The benchmark's FLOP count (MFU's numerator) against hand-counted multiply-adds."""

from __future__ import annotations

import pytest

from bench.fixtures import ModelShape, forward_macs, pair_train_flops

SHAPE = ModelShape(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                   intermediate_size=16)
ROW = {"prompt_ids": [5] * 3, "chosen_ids": [6] * 2, "rejected_ids": [7] * 2}


def test_forward_macs_by_hand() -> None:
    d, kv, dff, layers, vocab = 8, 4, 16, 2, 100
    per_token = 2 * d * d + 2 * d * kv + 3 * d * dff
    head = 4 * vocab * d  # output layer on the 4 completion positions only
    shared_keys = 5 * 6 / 2 + 2 * 3 + 2 * 3 / 2  # prompt+chosen causal; rejected sees prompt and itself
    split_keys = 2 * (5 * 6 / 2)  # two sequences of 5, the prompt twice
    att_shared, total_shared = forward_macs(ROW, SHAPE, shared_prompt=True)
    att_split, total_split = forward_macs(ROW, SHAPE, shared_prompt=False)
    assert att_shared == layers * 2 * d * shared_keys and att_split == layers * 2 * d * split_keys
    assert total_shared == pytest.approx(att_shared + layers * 7 * per_token + head)
    assert total_split == pytest.approx(att_split + layers * 10 * per_token + head)


def test_train_flops_count_backward_reference_and_lora() -> None:
    fwd = 2 * forward_macs(ROW, SHAPE)[1]
    assert pair_train_flops(ROW, SHAPE, shared_prompt=True, lora=False, live_reference=True) == pytest.approx(4 * fwd)
    assert pair_train_flops(ROW, SHAPE, shared_prompt=True, lora=False, live_reference=False) == pytest.approx(3 * fwd)
    assert pair_train_flops(ROW, SHAPE, shared_prompt=True, lora=True, live_reference=True) == pytest.approx(3 * fwd)
    assert pair_train_flops(ROW, SHAPE, shared_prompt=False, lora=False, live_reference=False) > 3 * fwd

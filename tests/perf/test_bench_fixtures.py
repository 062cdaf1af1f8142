"""The benchmark's multiply-add model (``bench.fixtures.forward_macs``) counts exactly the (query, key) pairs that
the engine's prompt-sharing packed layout lets attend: it explains the length sweep, so it must be right."""

from __future__ import annotations

import pytest

from bench.fixtures import CPU_SHAPE, QWEN_SLICE_SHAPE, LengthSpec, forward_macs, make_pairs
from hdpo_core.batching import packed_batch
from hdpo_core.forward import segments_to_mask
from hdpo_core.tokenize import TokenizedPair


@pytest.mark.parametrize("shape", [CPU_SHAPE, QWEN_SLICE_SHAPE])
def test_attention_macs_match_the_packed_mask(shape) -> None:
    rows = make_pairs(5, LengthSpec(prompt=(3, 40), completion=(1, 30)), shape.vocab_size, seed=4)
    for row in rows:
        pair = TokenizedPair(tuple(row["prompt_ids"]), tuple(row["chosen_ids"]), tuple(row["rejected_ids"]), "r")
        batch = packed_batch([pair], 0, row_tokens=4096, share_prompt=True)
        mask = segments_to_mask(batch.segments, *batch.input_ids.shape)
        allowed = int(mask[0, 0, :sum(map(len, (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)))].sum())
        attention, total = forward_macs(row, shape)
        assert attention == 2 * shape.hidden_size * shape.num_hidden_layers * allowed
        assert 0 < attention < total

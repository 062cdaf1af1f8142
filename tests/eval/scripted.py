"""A sampler that "generates" scripted completions (through the tiny tokenizer), so the verifiers' numbers in
results.json can be checked against hand-computed values through the real evaluation and report code."""

from __future__ import annotations

from typing import Any

from hdpo_core.eval.sampling import Samples
from hdpo_core.eval.targets import EvalSide


class ScriptedSampler:
    """Sample ``j`` of prompt ``i`` is ``texts[i][j]``, at every temperature."""

    def __init__(self, tokenizer: Any, texts: list[list[str]]) -> None:
        self.tokenizer, self.texts = tokenizer, texts

    def sample(self, prompts: list[list[int]], *, n: int, **_: Any) -> Samples:
        tokens = [self.tokenizer(self.texts[i][j], add_special_tokens=False)["input_ids"]
                  for i in range(len(prompts)) for j in range(n)]
        return Samples(tokens=tokens, finished=[True] * len(tokens), entropy_sum=[float("nan")] * len(tokens),
                       entropy_count=[0] * len(tokens))


def scripted_side(tokenizer: Any, texts: list[list[str]]) -> EvalSide:
    return EvalSide("policy", None, sampler=ScriptedSampler(tokenizer, texts))

"""Diversity of the ``n`` samples drawn for one prompt (higher = more diverse).

* ``distinct_n``: unique word n-grams / all word n-grams over the prompt's samples (Li et al. 2016).
* ``unique_answer_fraction``: distinct extracted final answers / samples (a sample with no answer counts
  as its own answer ``None``).
* ``mean_pairwise_similarity``: mean ``difflib.SequenceMatcher.ratio`` over all sample pairs (1 = identical);
  capped at the first 16 samples (120 pairs) so the cost stays small for large ``n``.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence

_MAX_PAIRWISE = 16


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = text.split()
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_answer_fraction(answers: Sequence[object]) -> float:
    return len({repr(a) for a in answers}) / len(answers) if answers else 0.0


def mean_pairwise_similarity(texts: Sequence[str]) -> float:
    texts = list(texts)[:_MAX_PAIRWISE]
    pairs = list(itertools.combinations(texts, 2))
    if not pairs:
        return 1.0
    return sum(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() for a, b in pairs) / len(pairs)


def diversity_metrics(texts: Sequence[str], answers: Sequence[object]) -> dict[str, float]:
    """All diversity numbers for one prompt's samples."""
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "unique_answers": unique_answer_fraction(answers),
        "pairwise_similarity": mean_pairwise_similarity(texts),
    }

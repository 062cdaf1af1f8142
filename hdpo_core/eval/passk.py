"""pass@k by the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, "Evaluating Large Language Models
Trained on Code", eq. 1): with ``n`` samples of which ``c`` are correct,

    pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

The product form avoids huge binomials (and the float overflow ``math.comb`` ratios hit for large n).
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n`` (``c`` correct)
    is correct. ``1.0`` when fewer than ``k`` samples are wrong (``n - c < k``)."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_curve(correct_counts: Sequence[int], n: int) -> list[float]:
    """Mean pass@k over prompts for k = 1..n (index ``k-1``); the coverage curve."""
    if not correct_counts:
        return [0.0] * n
    return [sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in range(1, n + 1)]

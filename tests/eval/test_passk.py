import itertools
import math

import pytest

from hdpo_core.eval.passk import pass_at_k, pass_at_k_curve


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_equals_enumeration_over_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0  # c = 0
    assert pass_at_k(10, 10, 1) == 1.0  # c = n
    assert pass_at_k(10, 3, 10) == 1.0  # k = n with any correct
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7


def test_large_n_is_stable():
    # comb(1000, 500) overflows a float ratio; the product form does not
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert 0 < pass_at_k(1000, 3, 10) < 1


def test_invalid_arguments():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_curve_is_mean_over_prompts_and_monotone():
    curve = pass_at_k_curve([0, 2, 4], 4)
    assert curve[0] == pytest.approx((0 + 0.5 + 1) / 3)
    assert curve[-1] == pytest.approx(2 / 3)
    assert all(a <= b for a, b in itertools.pairwise(curve))

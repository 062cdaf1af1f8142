"""Ground truth for entropy control: the H-DPO optimum in closed form on one-token responses.

For a fixed prompt, responses ``y`` in ``{0..K-1}``, reference ``pi_ref`` and reward ``r``, the H-DPO
objective ``E[r] - beta*(-alpha*H(pi) + CE(pi, pi_ref))`` is maximised by::

    pi*(y) ∝ pi_ref(y)^(1/alpha) * exp(r(y) / (alpha*beta))

i.e. the DPO optimum ``pi_ref*exp(r/beta)`` raised to the power ``1/alpha`` and renormalised, so its
entropy rises monotonically with alpha. Preference pairs drawn from ``pi_ref`` and labelled by the
Bradley-Terry model of ``r`` make the H-DPO loss's population minimiser exactly this policy (the implicit
reward ``alpha*beta*log pi - beta*log pi_ref`` equals ``r`` up to a constant), so a correct engine trained to
convergence must land on it. Used by the tests of issues 8 and 9 and by ``docs/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .tokenize import TokenizedPair


def optimum(ref_probs: torch.Tensor, reward: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """``[K]`` closed-form H-DPO optimal policy."""
    logits = (ref_probs.log() + reward / beta) / alpha
    return torch.softmax(logits.double(), -1)


def entropy(probs: torch.Tensor) -> float:
    p = probs.double().clamp_min(1e-300)
    return float(-(p * p.log()).sum())


def alpha_for_entropy(ref_probs: torch.Tensor, reward: torch.Tensor, *, beta: float, target: float,
                      lo: float = 0.05, hi: float = 20.0) -> float:
    """The alpha whose optimum has entropy ``target`` (bisection in log-alpha; entropy rises with alpha)."""
    a, b = math.log(lo), math.log(hi)
    for _ in range(100):
        mid = 0.5 * (a + b)
        if entropy(optimum(ref_probs, reward, alpha=math.exp(mid), beta=beta)) < target:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))


def bradley_terry_pairs(strengths: Sequence[int], *, prompt: Sequence[int], repeat: int = 1
                        ) -> tuple[torch.Tensor, list[TokenizedPair]]:
    """Pairs over every response pair whose win rates equal the Bradley-Terry probabilities *exactly*.

    With rewards ``r_y = log w_y`` for integer strengths ``w``, ``P(i beats j) = w_i / (w_i + w_j)``; so
    ``repeat*(w_i + w_j)`` comparisons of ``i`` and ``j`` of which ``repeat*w_i`` go to ``i`` have exactly that
    rate. The finite dataset's loss minimiser is then exactly the closed-form optimum (no label noise or
    rounding to blur the test). The pair design (how often each pair is compared) does not move the
    optimum; only the coverage of every pair matters. Token ``y`` is the response.

    Returns ``(reward [K], pairs)``.
    """
    k = len(strengths)
    pairs: list[TokenizedPair] = []
    for i in range(k):
        for j in range(i + 1, k):
            for n in range(repeat * (strengths[i] + strengths[j])):
                first, second = (i, j) if n < repeat * strengths[i] else (j, i)
                pairs.append(TokenizedPair(tuple(prompt), (first,), (second,), f"bt:{i}-{j}:{n}"))
    return torch.tensor([math.log(w) for w in strengths], dtype=torch.float64), pairs

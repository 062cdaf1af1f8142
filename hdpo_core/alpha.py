"""How alpha evolves over training: a constant, a schedule, or (issue 9) a controller.

The loss takes alpha as a number per step; a controller owns the rule. Each controller is a small frozen
description plus a pure ``value(step)``; the adaptive controller also has ``update``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol


class AlphaController(Protocol):
    def value(self, step: int) -> float: ...

    def update(self, step: int, entropy: float) -> None: ...

    def state(self) -> dict[str, float]: ...

    def load_state(self, state: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class ScheduledAlpha:
    """``alpha(step)`` from ``start`` to ``end`` over ``total_steps`` (step counts from 0).

    ``constant`` ignores ``end``; ``linear`` interpolates; ``cosine`` follows half a cosine from start to end.
    """

    start: float
    end: float | None = None
    kind: Literal["constant", "linear", "cosine"] = "constant"
    total_steps: int = 1

    def value(self, step: int) -> float:
        if self.kind == "constant" or self.end is None:
            return self.start
        frac = min(max(step / max(self.total_steps - 1, 1), 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * frac
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def update(self, step: int, entropy: float) -> None:
        return None

    def state(self) -> dict[str, float]:
        return {}

    def load_state(self, state: dict[str, float]) -> None:
        return None

"""How alpha evolves over training: a constant, a schedule, or (issue 9) a controller.

The loss takes alpha as a number per step; a controller owns the rule. Each controller is a small frozen
description plus a pure ``value(step)``; the adaptive controller also has ``update``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

from .settings import AlphaSchedule, LossSettings


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
    kind: AlphaSchedule = "constant"
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


class EntropyTargetAlpha:
    """Adapt alpha so the policy's per-token entropy reaches a target (dual ascent, as SAC tunes its
    temperature).

    The H-DPO optimum's entropy rises monotonically with alpha (it is the DPO optimum at power ``1/alpha``),
    so alpha is the Lagrange multiplier of the constraint ``H(pi) = target``: after each step,
    ``log alpha += lr * (target - H)`` — entropy below target raises alpha, above lowers it — clamped to
    ``[alpha_min, alpha_max]`` so a noisy entropy estimate can never push the loss into a degenerate regime.
    Working in log-alpha keeps alpha positive and makes the step relative.

    ``target`` is in nats per token; ``relative`` instead sets it to ``relative * H`` of the first step, when
    the policy still equals the reference (LoRA starts with B = 0; full fine-tuning starts from the copy).
    """

    def __init__(self, *, target: float | None = None, relative: float | None = None, init: float = 1.0,
                 lr: float = 0.05, alpha_min: float = 0.5, alpha_max: float = 2.0) -> None:
        if (target is None) == (relative is None):
            raise ValueError("give exactly one of target and relative")
        self.target, self.relative = target, relative
        self.lr, self.alpha_min, self.alpha_max = lr, alpha_min, alpha_max
        self.log_alpha = math.log(min(max(init, alpha_min), alpha_max))

    def value(self, step: int) -> float:
        return math.exp(self.log_alpha)

    def update(self, step: int, entropy: float) -> None:
        if not math.isfinite(entropy):
            return
        if self.target is None:
            self.target = float(self.relative) * entropy  # type: ignore[arg-type]
        self.log_alpha += self.lr * (self.target - entropy)
        self.log_alpha = min(max(self.log_alpha, math.log(self.alpha_min)), math.log(self.alpha_max))

    def state(self) -> dict[str, float]:
        out = {"log_alpha": self.log_alpha}
        if self.target is not None:
            out["entropy_target"] = self.target
        return out

    def load_state(self, state: dict[str, float]) -> None:
        if "log_alpha" in state:
            self.log_alpha = float(state["log_alpha"])
        if "entropy_target" in state:
            self.target = float(state["entropy_target"])


def parse_relative(text: str) -> float | None:
    """``'0.8x'`` -> 0.8 (a target entropy relative to the reference's); None when ``text`` is not such a
    multiple. The spec validates ``hdpo.target_entropy`` with it, :func:`alpha_controller` reads it."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*[xX]\s*", text)
    return float(m.group(1)) if m and float(m.group(1)) > 0 else None


def alpha_controller(settings: LossSettings, total_steps: int) -> AlphaController:
    """The controller ``settings`` describe: entropy-targeting for ``alpha: auto``, else constant or scheduled
    from ``alpha`` to ``alpha_end`` over ``total_steps``. ``settings`` are valid (the spec checked them)."""
    if settings.alpha == "auto":
        target = settings.target_entropy
        relative = parse_relative(target) if isinstance(target, str) else None
        absolute = None if relative is not None or target is None else float(target)
        return EntropyTargetAlpha(target=absolute, relative=relative, init=settings.alpha_init, lr=settings.alpha_lr,
                                  alpha_min=settings.alpha_min, alpha_max=settings.alpha_max)
    return ScheduledAlpha(start=float(settings.alpha), end=settings.alpha_end, kind=settings.alpha_schedule,
                          total_steps=total_steps)

"""What the training loop is given and gives back: options, paths, hooks into the service layer, the result,
and the held-out set. Plain frozen dataclasses (the core never sees the job spec). :class:`TrainOptions` and
the :class:`LossSettings` it carries live in :mod:`hdpo_core.settings` (torch-free: the spec builds on them)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .refcache import RefLogps
from .settings import LossSettings, TrainOptions
from .tokenize import TokenizedPair

__all__ = ["EvalSet", "LossSettings", "TrainHooks", "TrainOptions", "TrainPaths", "TrainResult"]


@dataclass(frozen=True)
class TrainPaths:
    checkpoints: Path | None  # None: no checkpoints at all (benchmarks: nothing written, no resume)
    final: Path


@dataclass
class TrainHooks:
    """Callbacks into the service layer (the core never writes the run folder's bookkeeping itself)."""

    on_metrics: Callable[[dict[str, Any]], None] = lambda m: None
    on_progress: Callable[[int, int], None] = lambda step, total: None
    on_message: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    final_dir: Path
    last_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSet:
    """Held-out pairs scored every ``opts.eval_every`` steps (``ref_cache``: their precomputed reference)."""

    pairs: Sequence[TokenizedPair]
    ref_cache: RefLogps | None = None

"""What the training loop is given and gives back: options, paths, hooks into the service layer, the result,
and the held-out set. Plain frozen dataclasses (the core never sees the job spec)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .choices import OnNonfinite, Scheduler
from .refcache import RefLogps
from .tokenize import TokenizedPair


@dataclass(frozen=True)
class TrainOptions:
    total_steps: int
    batch_size: int = 8
    micro_batch_size: int = 4
    learning_rate: float = 1e-6
    scheduler: Scheduler = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    log_every: int = 1
    save_every: int = 50
    eval_every: int | None = None
    keep_checkpoints: int = 2
    packing: bool = True
    row_tokens: int = 4096
    share_prompt: bool = True
    on_nonfinite: OnNonfinite = "stop"
    beta: float = 0.1
    sft_weight: float = 0.0
    activation_offloading: bool = False


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

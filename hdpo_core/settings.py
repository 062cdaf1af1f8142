"""The engine's settings: one frozen dataclass per concern, with the names, types, defaults and docstrings.

* :class:`LossSettings`: the H-DPO loss and how its alpha moves (the job spec's ``hdpo:`` section is BUILT
  from these fields: a new field here is a new spec key, documented by its docstring, with its default);
* :class:`TrainOptions`: the training loop (it carries the :class:`LossSettings` to the trainer);
* :class:`ModelOptions`, :class:`LoraOptions`: what to load and how to adapt it.

Defaults are written here once; the spec's sections take theirs from these classes (a test ties every
shared field). The object the spec produces is the object the engine uses: the trainer hands
``opts.loss`` to the loss unchanged, with only this step's alpha filled in (:meth:`LossSettings.with_alpha`).
Torch-free on purpose: the spec imports this module without paying for the engine.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from .choices import OnNonfinite, Scheduler

if TYPE_CHECKING:
    from .quant import QuantOptions

AlphaSchedule = Literal["constant", "linear", "cosine"]


@dataclass(frozen=True)
class LossSettings:
    """H-DPO loss: ``-log sigmoid(alpha*beta*(logp_w - logp_l) - beta*(logp_ref_w - logp_ref_l))``."""

    alpha: float | Literal["auto"] = 0.9
    """Entropy coefficient: 1 is plain DPO; below 1 sharpens the policy (lower entropy), above 1 flattens it.
    'auto' adapts it during training to reach hdpo.target_entropy (see docs/alpha.md)."""
    beta: float = 0.1
    """KL strength, as in DPO."""
    sft_weight: float = 0.0
    """Weight of an added NLL loss on the chosen completions (0 = off); counters likelihood displacement, as
    TRL's 'sft' loss and RPO do."""
    alpha_schedule: AlphaSchedule = "constant"
    """How alpha moves over training: constant, or linear/cosine from hdpo.alpha at the first step to
    hdpo.alpha_end at the last."""
    alpha_end: float | None = None
    """Final alpha of a linear or cosine schedule."""
    target_entropy: float | str | None = None
    """With alpha: auto, the per-token policy entropy to reach: nats per token (e.g. 0.5) or relative to the
    reference model's entropy at the first step (e.g. '0.8x')."""
    alpha_init: float = 1.0
    """With alpha: auto, the starting alpha."""
    alpha_lr: float = 0.05
    """With alpha: auto, the dual step size: log(alpha) += alpha_lr * (target_entropy - entropy) after each
    optimizer step."""
    alpha_min: float = 0.5
    """With alpha: auto, the lowest alpha allowed."""
    alpha_max: float = 2.0
    """With alpha: auto, the highest alpha allowed."""

    def with_alpha(self, value: float) -> LossSettings:
        """These settings at one step: ``alpha`` set to the value the schedule or controller gives for it.
        Every other field (a new one too) reaches the loss as configured. Keeps a subclass's type."""
        return replace(self, alpha=value)


@dataclass(frozen=True)
class TrainOptions:
    """The training loop's settings (steps are optimizer steps; ``batch_size`` is the global batch)."""

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
    activation_offloading: bool = False
    loss: LossSettings = field(default_factory=LossSettings)
    """The loss as configured; the trainer passes it to the loss unchanged (alpha filled in per step)."""
    beta: InitVar[float | None] = None
    """Shorthand for ``loss=LossSettings(beta=...)`` (older callers: tests, benchmarks); folded into ``loss``."""
    sft_weight: InitVar[float | None] = None
    """Shorthand for ``loss=LossSettings(sft_weight=...)``; folded into ``loss``."""

    def __post_init__(self, beta: float | None, sft_weight: float | None) -> None:
        if beta is not None:
            object.__setattr__(self, "loss", replace(self.loss, beta=beta))
        if sft_weight is not None:
            object.__setattr__(self, "loss", replace(self.loss, sft_weight=sft_weight))


@dataclass(frozen=True)
class ModelOptions:
    """The base model to load (policy initialisation and, frozen, the reference)."""

    name_or_path: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = "sdpa"
    gradient_checkpointing: bool = False
    quantization: QuantOptions | None = None


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters (peft): rank, scaling numerator (scale = alpha / r), input dropout, adapted modules."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

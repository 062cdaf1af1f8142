"""The job spec's ``hdpo:`` section (imported by the JobSpec): the loss coefficients and how alpha moves."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from service.spec.base import StrictModel


class HdpoSpec(StrictModel):
    """H-DPO loss: ``-log sigmoid(alpha*beta*(logp_w - logp_l) - beta*(logp_ref_w - logp_ref_l))``."""


    alpha: float | Literal["auto"] = Field(
        0.9, description="Entropy coefficient: 1 is plain DPO; below 1 sharpens the policy (lower entropy), above "
        "1 flattens it. 'auto' adapts it during training to reach hdpo.target_entropy (see docs/alpha.md).")
    beta: float = Field(0.1, gt=0, description="KL strength, as in DPO.")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an added NLL loss on the chosen completions "
                              "(0 = off); counters likelihood displacement, as TRL's 'sft' loss and RPO do.")
    alpha_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="How alpha moves over training: constant, or linear/cosine from hdpo.alpha at "
        "the first step to hdpo.alpha_end at the last.")
    alpha_end: float | None = Field(None, gt=0, description="Final alpha of a linear or cosine schedule.")
    target_entropy: float | str | None = Field(
        None, description="With alpha: auto, the per-token policy entropy to reach: nats per token (e.g. 0.5) or "
        "relative to the reference model's entropy at the first step (e.g. '0.8x').")
    alpha_init: float = Field(1.0, gt=0, description="With alpha: auto, the starting alpha.")
    alpha_lr: float = Field(0.05, gt=0, description="With alpha: auto, the dual step size: log(alpha) += "
                            "alpha_lr * (target_entropy - entropy) after each optimizer step.")
    alpha_min: float = Field(0.5, gt=0, description="With alpha: auto, the lowest alpha allowed.")
    alpha_max: float = Field(2.0, gt=0, description="With alpha: auto, the highest alpha allowed.")

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_positive(cls, value: Any) -> Any:
        """One line for a bad number (the union with 'auto' would otherwise report two contradicting ones)."""
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise PydanticCustomError("greater_than", "Input should be greater than {gt}", {"gt": 0.0})
        return value

    @model_validator(mode="after")
    def _alpha_rules(self) -> HdpoSpec:
        issues = []
        if self.alpha == "auto":
            if self.target_entropy is None:
                issues.append("hdpo.target_entropy: required with hdpo.alpha: auto; give nats per token (e.g. 0.5) "
                              "or a multiple of the reference entropy (e.g. '0.8x')")
            if self.alpha_schedule != "constant":
                issues.append("hdpo.alpha_schedule: a schedule needs a numeric hdpo.alpha, not auto; choose one")
            if not self.alpha_min <= self.alpha_init <= self.alpha_max:
                issues.append(f"hdpo.alpha_init ({self.alpha_init}) must lie within [hdpo.alpha_min, "
                              f"hdpo.alpha_max] = [{self.alpha_min}, {self.alpha_max}]")
        elif self.target_entropy is not None:
            issues.append("hdpo.target_entropy: only used with hdpo.alpha: auto; set alpha: auto or remove it")
        if isinstance(self.target_entropy, str) and parse_relative(self.target_entropy) is None:
            issues.append(f"hdpo.target_entropy: '{self.target_entropy}' is not a number or a multiple like "
                          "'0.8x'")
        if isinstance(self.target_entropy, float | int) and self.target_entropy <= 0:
            issues.append("hdpo.target_entropy: must be > 0 nats per token")
        if self.alpha_schedule != "constant" and self.alpha_end is None:
            issues.append(f"hdpo.alpha_end: required with hdpo.alpha_schedule: {self.alpha_schedule}")
        if self.alpha_min >= self.alpha_max:
            issues.append(f"hdpo.alpha_min ({self.alpha_min}) must be below hdpo.alpha_max ({self.alpha_max})")
        if issues:
            raise ValueError("\n".join(issues))
        return self


def parse_relative(text: str) -> float | None:
    """'0.8x' -> 0.8; None when ``text`` is not such a multiple."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*[xX]\s*", text)
    return float(m.group(1)) if m and float(m.group(1)) > 0 else None

"""The job spec's ``hdpo:`` section (imported by the JobSpec): the loss coefficients and how alpha moves.

Its fields are :class:`hdpo_core.settings.LossSettings`'s, built from that dataclass (:func:`hdpo_section`):
names, types, defaults and descriptions are written once, in the core. This module adds only what the spec
owns: the bounds (``beta > 0`` ...) and the cross-field rules. A validated section hands the trainer the
core object itself (:attr:`HdpoSection.core`), which goes unchanged to the loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hdpo_core.alpha import parse_relative
from hdpo_core.settings import LossSettings
from service.spec.base import StrictModel
from service.spec.core_fields import section_fields

__all__ = ["BOUNDS", "HdpoSection", "HdpoSpec", "hdpo_section"]

#: What the spec checks beyond the type (pydantic ``Field`` constraints), per field. A new setting needs an
#: entry only when it has a bound; ``alpha`` has its own validator (one line for 'auto' or a bad number).
BOUNDS: dict[str, dict[str, Any]] = {
    "beta": {"gt": 0}, "sft_weight": {"ge": 0}, "alpha_end": {"gt": 0}, "alpha_init": {"gt": 0},
    "alpha_lr": {"gt": 0}, "alpha_min": {"gt": 0}, "alpha_max": {"gt": 0},
}


class HdpoSection(StrictModel):
    """The rules of the ``hdpo:`` section; its fields come from the core dataclass (:func:`hdpo_section`)."""

    core_class: ClassVar[type[LossSettings]] = LossSettings

    @property
    def core(self) -> LossSettings:
        """The validated section as the core's settings object (what the trainer and the loss take)."""
        return self.core_class(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self.core_class)})

    @field_validator("alpha", mode="before", check_fields=False)
    @classmethod
    def _alpha_positive(cls, value: Any) -> Any:
        """One line for a bad number (the union with 'auto' would otherwise report two contradicting ones)."""
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise PydanticCustomError("greater_than", "Input should be greater than {gt}", {"gt": 0.0})
        return value

    @model_validator(mode="after")
    def _alpha_rules(self) -> HdpoSection:
        h = self.core
        issues = []
        if h.alpha == "auto":
            if h.target_entropy is None:
                issues.append("hdpo.target_entropy: required with hdpo.alpha: auto; give nats per token (e.g. 0.5) "
                              "or a multiple of the reference entropy (e.g. '0.8x')")
            if h.alpha_schedule != "constant":
                issues.append("hdpo.alpha_schedule: a schedule needs a numeric hdpo.alpha, not auto; choose one")
            if not h.alpha_min <= h.alpha_init <= h.alpha_max:
                issues.append(f"hdpo.alpha_init ({h.alpha_init}) must lie within [hdpo.alpha_min, "
                              f"hdpo.alpha_max] = [{h.alpha_min}, {h.alpha_max}]")
        elif h.target_entropy is not None:
            issues.append("hdpo.target_entropy: only used with hdpo.alpha: auto; set alpha: auto or remove it")
        if isinstance(h.target_entropy, str) and parse_relative(h.target_entropy) is None:
            issues.append(f"hdpo.target_entropy: '{h.target_entropy}' is not a number or a multiple like '0.8x'")
        if isinstance(h.target_entropy, float | int) and h.target_entropy <= 0:
            issues.append("hdpo.target_entropy: must be > 0 nats per token")
        if h.alpha_schedule != "constant" and h.alpha_end is None:
            issues.append(f"hdpo.alpha_end: required with hdpo.alpha_schedule: {h.alpha_schedule}")
        if h.alpha_min >= h.alpha_max:
            issues.append(f"hdpo.alpha_min ({h.alpha_min}) must be below hdpo.alpha_max ({h.alpha_max})")
        if issues:
            raise ValueError("\n".join(issues))
        return self


def hdpo_section(settings: type[LossSettings], name: str = "HdpoSpec") -> type[HdpoSection]:
    """The ``hdpo:`` section for ``settings`` (:class:`LossSettings` or a subclass with more fields): one
    pydantic field per dataclass field, in its order, with its type, default and docstring, plus
    :data:`BOUNDS`. Its ``core`` is an instance of ``settings``."""
    section = create_model(name, __base__=HdpoSection, __module__=__name__,
                           __doc__=settings.__doc__, **section_fields(settings, BOUNDS))
    section.core_class = settings
    return section


if TYPE_CHECKING:
    HdpoSpec = HdpoSection
else:
    HdpoSpec = hdpo_section(LossSettings)

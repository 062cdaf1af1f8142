"""The one base of every job spec section: strict, closed, frozen, finite.

Every section (``model``, ``train``, ``eval``, ``merge`` ...) inherits :class:`StrictModel`, so the same rules
hold under every name: unknown keys are refused (with "did you mean"), values are not coerced (``"8"`` is not
an int, ``"yes"`` is not a bool), and ``.inf``/``.nan`` are refused for every float field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A spec section: ``extra="forbid"``, ``frozen``, ``strict`` (no coercion), no inf/nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

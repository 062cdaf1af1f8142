"""Small shims over transformers API renames, in one place so call sites stay plain."""

from __future__ import annotations

import inspect

import torch

from .forward import unwrap_causal_lm


def cache_kwarg(model: torch.nn.Module) -> str:
    """The KV-cache argument/output name of ``model.forward``: ``cache`` in transformers 5.2x+ (where
    ``past_key_values`` still works but warns, and is removed in 5.40), ``past_key_values`` before."""
    lm = unwrap_causal_lm(model)
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

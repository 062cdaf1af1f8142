"""The ``quantization:`` section of the job spec: a k-bit base under LoRA (QLoRA).

Valid only with ``lora:`` (a quantized weight cannot be trained) and without sharding backends that would
split the packed k-bit weights (FSDP2, DeepSpeed ZeRO-3); :class:`~service.spec.job.JobSpec` checks both. The
backend is bitsandbytes (CUDA, and its CPU backend), installed by the ``qlora`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from service.spec.base import StrictModel

if TYPE_CHECKING:
    from hdpo_core.quant import QuantOptions


class QuantizationSpec(StrictModel):
    """How the frozen base model is stored while the LoRA adapter trains (bitsandbytes)."""


    bits: Literal[4, 8] = Field(4, description="4: QLoRA (4-bit blocks, quant_type); 8: LLM.int8 weights (its "
                                "matmuls also round the activations: the merge gate then needs merge.tolerance "
                                "near 1e-2).")
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (NormalFloat, QLoRA's choice for normally distributed weights) "
        "or fp4. Ignored for bits: 8.")
    double_quant: bool = Field(True, description="Quantize the per-block scales too (about 0.4 bits/param less). "
                               "Ignored for bits: 8.")
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype the dequantized blocks are multiplied in; null = model.dtype. bfloat16 is the "
        "usual choice on GPUs.")


def quantization_problems(quant: QuantizationSpec | None, *, has_lora: bool, backend: str) -> list[str]:
    """The cross-section rules of ``quantization:`` (one line each)."""
    if quant is None:
        return []
    issues = []
    if not has_lora:
        issues.append("quantization: a quantized base cannot be fully fine-tuned; add a lora: section (QLoRA) or "
                      "remove quantization:")
    if backend in ("fsdp", "deepspeed"):
        issues.append(f"quantization: not supported with distributed.backend: {backend} (it would shard the packed "
                      "k-bit weights); use backend ddp or none")
    return issues


def quant_options(quant: QuantizationSpec | None, model_dtype: str, device: str) -> QuantOptions | None:
    """The core's :class:`~hdpo_core.quant.QuantOptions` for the section (None when absent); the compute dtype
    defaults to the model's dtype."""
    from hdpo_core.quant import QuantOptions

    if quant is None:
        return None
    return QuantOptions(bits=quant.bits, quant_type=quant.quant_type, double_quant=quant.double_quant,
                        compute_dtype=quant.compute_dtype or model_dtype, device=device)

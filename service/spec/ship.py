"""Spec sections for shipping a trained run: ``merge:``, ``export:`` and ``hub:``.

The lead's ``JobSpec`` imports :class:`MergeSpec`, :class:`ExportSpec` and :class:`HubSpec` from here; the
ship stages (``service/stages/ship.py``) also parse them straight from ``RUN/job.resolved.yaml`` so that
``hdpo-tune merge|export|push RUN_DIR`` work standalone. Defaults live here only.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from service.spec.base import StrictModel

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class MergeSpec(StrictModel):
    """How LoRA adapters are folded into the base weights after training."""


    enabled: bool = Field(
        True, description="Run the merge stage (LoRA: merge adapters; full fine-tuning: copy)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="dtype the merged safetensors are saved in. The merge itself always runs in float32. "
        "Default: the base model's dtype from its config.json, else float32.",
    )
    tolerance: float = Field(
        1e-4,
        gt=0,
        description="Max abs logit difference allowed between the float32 merged model and base+adapter.",
    )


class OnnxSpec(StrictModel):
    """ONNX export of the merged model: one decoder graph with KV cache, validated by onnxruntime."""


    enabled: bool = Field(False, description="Export ONNX after merging.")
    opset: int | None = Field(
        None, ge=18, description="ONNX opset (>= 18, dynamo exporter). Default: torch's default."
    )
    quantize: Literal["int8", "int4"] | None = Field(
        None,
        description="Also write a weight-only quantized model (onnxruntime MatMulNBits, block-wise symmetric) "
        "as model.int8.onnx / model.int4.onnx; hdpo_onnx.json and genai_config.json then serve it, and "
        "onnx/quantization.json reports size, speed and greedy eval accuracy against float32.",
    )
    quantize_block_size: Literal[16, 32, 64, 128] = Field(
        32, description="Weights per quantization scale (smaller: more accurate, larger file)."
    )
    atol: float = Field(
        1e-4, gt=0, description="Max abs logit difference, onnxruntime CPU vs PyTorch float32."
    )
    decode_steps: int = Field(
        3, ge=3, description="Decode steps (feeding present.* back) checked after prefill."
    )
    greedy_tokens: int = Field(
        32, ge=1, description="Greedy tokens that must be identical between ORT and PyTorch."
    )
    int8_min_top1_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Floor for int8: fraction of positions whose top-1 token matches float32 PyTorch.",
    )
    int4_min_top1_agreement: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Floor for int4: fraction of positions whose top-1 token matches float32 PyTorch.",
    )
    quantized_max_rel_logit_error: float = Field(
        0.25,
        gt=0,
        description="Ceiling for a quantized model: RMS(logit diff) / RMS(centred float32 logits).",
    )
    quantized_eval_tasks: int = Field(
        128,
        ge=0,
        description="eval.tasks rows decoded greedily with float32 and the quantized model and scored with "
        "eval.verifier for onnx/quantization.json (0 = skip the accuracy part).",
    )
    genai_config: bool = Field(
        True, description="Write genai_config.json so onnxruntime-genai serves the folder as it is."
    )


class GgufSpec(StrictModel):
    """GGUF export of the merged model for llama.cpp and Ollama (Llama, Mistral, Qwen2; byte-level BPE)."""

    enabled: bool = Field(False, description="Export GGUF after merging (needs the gguf package).")
    types: list[Literal["f16", "q8_0"]] = Field(
        ["f16", "q8_0"], min_length=1, description="Files to write: gguf/model.<type>.gguf."
    )
    modelfile: bool = Field(
        True, description="Write an Ollama Modelfile (chat template as a Go template) for the smallest file."
    )
    f16_max_rel_logit_error: float = Field(
        0.01, gt=0, description="Ceiling for f16: RMS(logit diff) / RMS(centred float32 logits)."
    )
    q8_0_max_rel_logit_error: float = Field(
        0.05, gt=0, description="Ceiling for q8_0: RMS(logit diff) / RMS(centred float32 logits)."
    )
    min_top1_agreement: float = Field(
        0.9, ge=0, le=1, description="Floor: fraction of positions whose top-1 token matches float32."
    )

    @field_validator("types")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a type twice")
        return value


class ExportSpec(StrictModel):
    """Export formats: ONNX (onnxruntime, onnxruntime-genai) and GGUF (llama.cpp, Ollama)."""

    onnx: OnnxSpec = Field(default_factory=OnnxSpec, description="ONNX export settings.")
    gguf: GgufSpec = Field(default_factory=GgufSpec, description="GGUF export settings.")


class HubSpec(StrictModel):
    """Where and how to push the merged model (and ONNX) to the Hugging Face Hub. The token comes from HF_TOKEN."""


    repo_id: str | None = Field(
        None, description="Target model repo 'owner/name'. None: the push stage is skipped."
    )
    private: bool = Field(True, description="Visibility to create with; an existing repo must match it.")
    revision: str | None = Field(
        None, description="Branch to push to (created if missing). None: the default branch."
    )
    commit_message: str | None = Field(
        None, description="Commit message. Default: 'hdpo-tune: upload run <run name>'."
    )
    create_pr: bool = Field(False, description="Open a pull request instead of committing to the branch.")

    @field_validator("repo_id")
    @classmethod
    def _repo_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not _REPO_ID.match(value):
            raise ValueError(f"{value!r} is not 'owner/name' (letters, digits, '.', '_', '-')")
        return value

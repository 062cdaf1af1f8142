"""Merge a LoRA adapter trained on a k-bit base (QLoRA): dequantized base + adapter, checked against the
quantized base + adapter it came from.

peft's own ``merge_and_unload`` on a 4-bit layer re-quantizes the merged weight, which throws most of the
small H-DPO delta away; here the base is dequantized first (transformers' ``dequantize``: each ``Linear4bit``
becomes an ``nn.Linear`` holding exactly the weights the 4-bit forward multiplies with), the adapter is merged
into that in float32, and the result is gated like :func:`hdpo_core.export.merge.merge_lora`: max abs logit
difference to the quantized model + adapter on the sample prompts, plus the greedy tokens both generate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hdpo_core import artifact
from hdpo_core.errors import RunError
from hdpo_core.forward import unwrap_causal_lm
from hdpo_core.layout import MERGE_INFO
from hdpo_core.public_paths import public_path
from hdpo_core.quant import QuantOptions, dequantize, load_kwargs

from . import merge as m

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import BatchEncoding, PreTrainedModel

GREEDY_TOKENS = 16


@dataclass(frozen=True)
class QloraMergeResult(m.MergeResult):
    """:class:`~hdpo_core.export.merge.MergeResult` plus what the k-bit base was and the greedy agreement."""

    base_quantization: str = ""
    greedy_tokens: int = 0
    greedy_identical: int = 0


def _greedy(model: PreTrainedModel | PeftModel, batch: BatchEncoding) -> torch.Tensor:
    with torch.no_grad():
        # a causal-LM adapter loads as PeftModelForCausalLM (which has generate); peft types from_pretrained as
        # the PeftModel base class, whose other attributes go through nn.Module's __getattr__
        out: torch.Tensor = model.generate(**batch, max_new_tokens=GREEDY_TOKENS,  # type: ignore[operator]
                                           min_new_tokens=GREEDY_TOKENS, do_sample=False)
    return out[:, batch["input_ids"].shape[1]:]


def merge_qlora(adapter_dir: Path, out_dir: Path, *, base_id: str, dtype: str, tolerance: float,
                quant: QuantOptions, extra: m.ExtraFiles | None = None) -> QloraMergeResult:
    """Merge ``adapter_dir`` into the dequantized ``base_id``; build ``out_dir`` aside with ``extra`` files and
    rename it into place whole (:mod:`hdpo_core.artifact`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hdpo_core.model import has_tokenizer_files

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer_files(adapter_dir) else base_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    # the same k-bit weights (quantization does not depend on the compute dtype) multiplied in float32, so the
    # gate measures the merge, not bfloat16 rounding
    exact = replace(quant, compute_dtype="float32")
    base = AutoModelForCausalLM.from_pretrained(base_id, dtype=torch.float32, **load_kwargs(exact))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    batch = tokenizer(list(m.SAMPLE_TEXTS), return_tensors="pt", padding=True).to(quant.device)
    m._set_generation_ids(unwrap_causal_lm(model), tokenizer)
    ref, ref_tokens = m._logits(model, batch), _greedy(model, batch)
    plain = dequantize(model.unload(), "float32")
    try:
        merged = PeftModel.from_pretrained(plain, str(adapter_dir)).eval().merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft raises ValueError when the merged weights contain NaN
        raise RunError(f"LoRA merge of {adapter_dir} refused: {exc}; the adapter weights are broken") from exc
    valid = batch["attention_mask"].bool()
    diff = float((m._logits(merged, batch) - ref).abs()[valid].max())
    if not diff <= tolerance:
        hint = ("; LLM.int8 also rounds the activations (float16, int8), so an 8-bit base needs merge.tolerance "
                "near 1e-2" if quant.bits == 8 else "")
        raise RunError(f"merged model (dequantized base + adapter) differs from the {quant.bits}-bit base + "
                       f"adapter: max abs logit diff {diff:.3g} > merge.tolerance {tolerance:g}{hint}")
    merged = merged.to(m.DTYPES[dtype])
    for key in ("quantization_config", "_pre_quantization_dtype"):
        merged.config.__dict__.pop(key, None)
    same = int((_greedy(merged, batch) == ref_tokens).sum())
    merged.to("cpu")
    tokenizer.padding_side = "right"
    result = QloraMergeResult("lora", False, dtype, diff, tolerance, m.fingerprint(adapter_dir, dtype),
                              public_path(base_id, out_dir.parent), base_quantization=quant.identity(),
                              greedy_tokens=int(ref_tokens.numel()), greedy_identical=same)
    with artifact.building(out_dir, required=(MERGE_INFO, "config.json")) as tmp:
        merged.save_pretrained(tmp, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        (tmp / MERGE_INFO).write_text(json.dumps(asdict(result), indent=2) + "\n")
        m._write_extra(tmp, result, extra)
    return result

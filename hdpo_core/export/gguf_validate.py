"""Check a GGUF file with a reader no one here wrote: transformers' own GGUF loader.

``from_pretrained(folder, gguf_file=...)`` dequantizes the file, undoes llama.cpp's q/k permutation and
rebuilds the tokenizer from the file's metadata. Its logits are compared with the merged float32 model on
the validation prompts, and its tokenizer with the merged tokenizer on texts that stress pre-tokenization
(digits, runs of spaces, newlines, punctuation, non-ASCII). Gates: relative logit error (RMS of the
difference over RMS of the centred float32 logits, so it does not depend on the logit scale), top-1
agreement, identical token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hdpo_core.export.onnx_validate import PROMPTS

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PROBE_TEXTS = (
    "Tom has 146 apples and buys 148 more: 146 + 148 = 294.",
    "  two spaces,\tline\nbreaks\n\n and   three",
    "Don't stop; it's 3.14159 (pi) -- or $20/month!",
    "naïve café, Zürich: 東京 🚀",
)


def _logits(model: PreTrainedModel, rows: list[list[int]]) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(torch.tensor([r])).logits[0].float().numpy() for r in rows]


def compare_gguf(model_dir: Path, gguf_path: Path) -> dict[str, Any]:
    """Numbers for one GGUF file against ``model_dir`` (float32); no gate applied here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_tok = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    got = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    got_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    rows = [ref_tok(p)["input_ids"] for p in PROMPTS]
    sq_diff = sq_ref = 0.0
    agree = total = 0
    max_abs = 0.0
    for a, b in zip(_logits(ref, rows), _logits(got, rows), strict=True):
        centred = a - a.mean(-1, keepdims=True)
        sq_diff += float(((b - a).astype(np.float64) ** 2).sum())
        sq_ref += float((centred.astype(np.float64) ** 2).sum())
        max_abs = max(max_abs, float(np.abs(b - a).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    mismatched = [
        t for t in (*PROBE_TEXTS, *PROMPTS)
        if ref_tok(t, add_special_tokens=False)["input_ids"] != got_tok(t, add_special_tokens=False)["input_ids"]
    ]
    return {
        "file": gguf_path.name,
        "loaded_as": type(got).__name__,
        "max_abs_logit_diff": max_abs,
        "rel_logit_error": float(np.sqrt(sq_diff / max(sq_ref, 1e-30))),
        "top1_agreement": agree / total,
        "tokenizer_identical": not mismatched,
        "tokenizer_mismatches": mismatched,
    }


def gguf_failures(result: dict[str, Any], *, max_rel_logit_error: float, min_top1_agreement: float) -> list[str]:
    """Gate messages for one file's numbers (empty when it passes)."""
    out = []
    name = result["file"]
    if result["rel_logit_error"] > max_rel_logit_error:
        out.append(
            f"GGUF validation failed: {name} relative logit error {result['rel_logit_error']:.3g} > "
            f"{max_rel_logit_error:g} (transformers' GGUF loader vs the merged model)"
        )
    if result["top1_agreement"] < min_top1_agreement:
        out.append(
            f"GGUF validation failed: {name} top-1 agreement {result['top1_agreement']:.1%} < "
            f"export.gguf.min_top1_agreement {min_top1_agreement:.1%}"
        )
    if not result["tokenizer_identical"]:
        out.append(
            f"GGUF validation failed: {name} tokenizes {result['tokenizer_mismatches'][0]!r} differently from "
            "the merged tokenizer"
        )
    return out

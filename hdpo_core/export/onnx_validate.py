"""Parity check, failing hard: onnxruntime (CPU) vs PyTorch float32 on a left-padded batch.

Steps: prefill on two prompts of different lengths (left-padded, so mask and position handling is
exercised), then ``decode_steps`` single-token steps feeding ``present.*`` back as ``past_key_values.*``;
both sides get the same tokens (PyTorch's argmax) so their logits are comparable at every step. Then both
generate ``greedy_tokens`` tokens greedily from their own outputs and must agree token for token.
For a weight-quantized model (int8/int4) a float32 atol is meaningless; its gates fit quantization: top-1
agreement over every compared position (a floor) and the relative logit error (a ceiling), where the
relative error is RMS(logit diff) / RMS(centred float32 logits), so it does not depend on the logit scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hdpo_core.compat import cache_kwarg
from hdpo_core.errors import RunError
from hdpo_core.export.ort_generate import OrtDecoder, left_pad, position_ids_for

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel

PROMPTS = ("The aligned model answers the question carefully and", "Hi")


@dataclass(frozen=True)
class ParityResult:
    """Per-run numbers; ``max_abs_diff`` over valid (non-pad) positions of all compared steps."""

    max_abs_diff: float
    max_abs_diff_per_step: list[float]
    rel_logit_error: float
    top1_agreement: float
    greedy_agreement: float
    greedy_identical: bool
    torch_greedy: list[list[int]]
    ort_greedy: list[list[int]]


def _torch_step(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache
               ) -> tuple[torch.Tensor, DynamicCache]:
    pos = torch.from_numpy(position_ids_for(mask.numpy(), ids.shape[1]))
    kw = cache_kwarg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache})
    return out.logits, getattr(out, kw)


def compare(
    model: PreTrainedModel, decoder: OrtDecoder, prompts: list[list[int]], *, decode_steps: int, greedy_tokens: int
) -> ParityResult:
    """Run both sides; see module docstring. ``model`` is a float32 HF causal LM in eval mode."""
    from transformers import DynamicCache

    ids_np, mask_np = left_pad(prompts, decoder.config.pad_token_id)
    ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
    cache = DynamicCache(config=model.config)
    past = decoder.empty_past(len(prompts))
    diffs, agree, total = [], 0, 0
    sq_diff, sq_ref = 0.0, 0.0
    valid = mask_np.astype(bool)
    with torch.no_grad():
        for step in range(decode_steps + 1):
            ref, cache = _torch_step(model, ids, mask, cache)
            got, past = decoder.step(ids.numpy(), mask.numpy(), past)
            ref_np = ref.numpy()
            keep = valid if step == 0 else np.ones(ref_np.shape[:2], dtype=bool)
            if not np.isfinite(got[keep]).all():
                raise RunError(f"ONNX validation failed: onnxruntime logits contain NaN/inf at step {step}")
            diffs.append(float(np.abs(got[keep] - ref_np[keep]).max()))
            centred = ref_np[keep] - ref_np[keep].mean(-1, keepdims=True)
            sq_diff += float(((got[keep] - ref_np[keep]).astype(np.float64) ** 2).sum())
            sq_ref += float((centred.astype(np.float64) ** 2).sum())
            agree += int((got.argmax(-1) == ref_np.argmax(-1))[keep].sum())
            total += int(keep.sum())
            _check_present(past, decoder, mask.shape[1])
            nxt = ref[:, -1, :].argmax(-1, keepdim=True)
            ids = nxt
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        torch_greedy = _torch_greedy(model, prompts, decoder.config.pad_token_id, greedy_tokens)
    ort_greedy = decoder.generate(prompts, max_new_tokens=greedy_tokens, stop_at_eos=False)
    same = sum(
        a == b for t, o in zip(torch_greedy, ort_greedy, strict=True) for a, b in zip(t, o, strict=True)
    )
    return ParityResult(
        max_abs_diff=max(diffs),
        max_abs_diff_per_step=diffs,
        rel_logit_error=float(np.sqrt(sq_diff / max(sq_ref, 1e-30))),
        top1_agreement=agree / total,
        greedy_agreement=same / (len(prompts) * greedy_tokens),
        greedy_identical=torch_greedy == ort_greedy,
        torch_greedy=torch_greedy,
        ort_greedy=ort_greedy,
    )


def _check_present(past: dict[str, np.ndarray], decoder: OrtDecoder, total_len: int) -> None:
    cfg = decoder.config
    for name, arr in past.items():
        want = (arr.shape[0], cfg.num_kv_heads, total_len, cfg.head_dim)
        if arr.shape != want:
            raise RunError(
                f"ONNX validation failed: {name} has shape {arr.shape}, expected {want} (cache not growing)"
            )


def _torch_greedy(model: PreTrainedModel, prompts: list[list[int]], pad_id: int, n: int) -> list[list[int]]:
    """Greedy decode with the same left padding/position ids as ORT, without EOS stopping."""
    from transformers import DynamicCache

    ids_np, mask_np = left_pad(prompts, pad_id)
    ids, mask = torch.from_numpy(ids_np), torch.from_numpy(mask_np)
    cache, out = DynamicCache(config=model.config), []
    for _ in range(n):
        logits, cache = _torch_step(model, ids, mask, cache)
        ids = logits[:, -1, :].argmax(-1, keepdim=True)
        out.append(ids[:, 0])
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
    return torch.stack(out, dim=1).tolist()


def validate_export(
    onnx_dir: Path,
    model_dir: Path,
    *,
    atol: float,
    decode_steps: int,
    greedy_tokens: int,
    quantized_file: str | None = None,
    quantized_min_top1_agreement: float = 0.9,
    quantized_max_rel_logit_error: float = 0.1,
) -> dict[str, Any]:
    """Check the float32 graph (and the quantized one if given) against ``model_dir`` in PyTorch float32.

    Returns the report for ``validation.json``: ``passed`` and one message per failed gate in ``failures``
    (the caller writes the report, then raises). NaN logits or a cache that does not grow raise at once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    fp32 = compare(
        model,
        OrtDecoder(onnx_dir, model_file="model.onnx"),
        prompts,
        decode_steps=decode_steps,
        greedy_tokens=greedy_tokens,
    )
    report: dict[str, Any] = {
        "prompts": list(PROMPTS),
        "batch": "left-padded, 2 prompts of lengths " + ", ".join(str(len(p)) for p in prompts),
        "decode_steps": decode_steps,
        "atol": atol,
        "max_abs_logit_diff": fp32.max_abs_diff,
        "max_abs_logit_diff_per_step": fp32.max_abs_diff_per_step,
        "rel_logit_error": fp32.rel_logit_error,
        "top1_agreement": fp32.top1_agreement,
        "greedy_tokens": greedy_tokens,
        "greedy_identical": fp32.greedy_identical,
    }
    failures: list[str] = []
    if fp32.max_abs_diff > atol:
        worst = int(np.argmax(fp32.max_abs_diff_per_step))
        failures.append(
            f"ONNX validation failed: max abs logit diff {fp32.max_abs_diff:.3g} > export.onnx.atol {atol:g} "
            f"(worst at {'prefill' if worst == 0 else f'decode step {worst}'}); the exported graph does not match PyTorch"
        )
    if not fp32.greedy_identical:
        failures.append(
            f"ONNX validation failed: greedy tokens differ from PyTorch ({fp32.greedy_agreement:.1%} of "
            f"{greedy_tokens}x{len(prompts)} agree) although logits are within atol {atol:g}"
        )
    if quantized_file is not None:
        q = compare(
            model,
            OrtDecoder(onnx_dir, model_file=quantized_file),
            prompts,
            decode_steps=decode_steps,
            greedy_tokens=greedy_tokens,
        )
        report["quantized"] = {
            "model_file": quantized_file,
            "max_abs_logit_diff": q.max_abs_diff,
            "rel_logit_error": q.rel_logit_error,
            "top1_agreement": q.top1_agreement,
            "greedy_agreement": q.greedy_agreement,
            "greedy_identical": q.greedy_identical,
            "min_top1_agreement": quantized_min_top1_agreement,
            "max_rel_logit_error": quantized_max_rel_logit_error,
        }
        failures += quantized_failures(report["quantized"], quantized_file)
    report["passed"] = not failures
    report["failures"] = failures
    return report


def quantized_failures(q: dict[str, Any], model_file: str) -> list[str]:
    """The gate messages for a quantized model's parity numbers (empty when it passes)."""
    out = []
    precision = "int4" if "int4" in model_file else "int8"
    if q["top1_agreement"] < q["min_top1_agreement"]:
        out.append(
            f"ONNX quantized validation failed: {model_file} top-1 agreement {q['top1_agreement']:.1%} < "
            f"{q['min_top1_agreement']:.1%} (export.onnx.{precision}_min_top1_agreement); lower the floor or drop "
            "quantize"
        )
    if q["rel_logit_error"] > q["max_rel_logit_error"]:
        out.append(
            f"ONNX quantized validation failed: {model_file} relative logit error {q['rel_logit_error']:.3g} > "
            f"export.onnx.quantized_max_rel_logit_error {q['max_rel_logit_error']:g}; raise it or drop quantize"
        )
    return out

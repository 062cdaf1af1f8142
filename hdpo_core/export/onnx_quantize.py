"""Weight-only quantization of the exported decoder (int4 / int8) with onnxruntime's own quantizer, and what
it costs: size, speed and eval accuracy against the float32 graph.

``MatMulNBitsQuantizer`` replaces every MatMul whose weight is a constant by a ``MatMulNBits`` node holding
block-wise symmetric ``bits``-bit weights (one float scale per ``block_size`` inputs); activations stay
float32. It is the operator onnxruntime-genai's own int4 models use, so ``genai_config.json`` can point at
the quantized file unchanged. A tied lm_head (a transposed embedding, not a constant) stays float32.
The accuracy report decodes greedily with both graphs on the same prompts and scores both with the same
check, so the change it reports is the quantization's alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hdpo_core.export.ort_generate import OrtDecoder


def quantize_weights(onnx_dir: Path, *, bits: int, block_size: int) -> str:
    """Write ``model.int{bits}.onnx`` (+ ``.data``) next to ``model.onnx``; returns its file name."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    target = f"model.int{bits}.onnx"
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per node otherwise
    quantizer = MatMulNBitsQuantizer(
        str(onnx_dir / "model.onnx"), bits=bits, block_size=block_size, is_symmetric=True
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(onnx_dir / target), use_external_data_format=True)
    data = onnx_dir / f"{target}.data"
    if data.exists():
        data.chmod(0o644)  # the quantizer writes it owner-only; it is a model file like model.onnx.data
    return target


def model_bytes(onnx_dir: Path, model_file: str) -> int:
    """Size on disk of a graph and its external data file."""
    return sum(
        p.stat().st_size for p in (onnx_dir / model_file, onnx_dir / f"{model_file}.data") if p.exists()
    )


def _greedy(
    decoder: OrtDecoder, prompts: Sequence[list[int]], max_new_tokens: int, batch: int
) -> tuple[list[list[int]], float]:
    """Greedy completions (stopping at EOS) and the tokens per second it ran at."""
    outs: list[list[int]] = []
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        outs += decoder.generate(list(prompts[i : i + batch]), max_new_tokens=max_new_tokens)
    elapsed = max(time.perf_counter() - started, 1e-9)
    return outs, sum(len(o) for o in outs) / elapsed


def quantization_report(
    onnx_dir: Path,
    quantized_file: str,
    *,
    prompts: Sequence[list[int]],
    check: Callable[[int, list[int]], bool] | None,
    max_new_tokens: int,
    batch: int = 16,
    threads: int | None = None,
) -> dict[str, Any]:
    """Size, greedy decode speed and (with ``check(prompt_index, tokens)``) accuracy, float32 vs quantized.

    Speed is measured, never asserted: it depends on the machine and its load; both graphs run the same
    prompts in the same process one after the other, so the ratio is the comparable figure.
    """
    fp32 = OrtDecoder(onnx_dir, model_file="model.onnx", threads=threads)
    quant = OrtDecoder(onnx_dir, model_file=quantized_file, threads=threads)
    ref, ref_speed = _greedy(fp32, prompts, max_new_tokens, batch)
    got, q_speed = _greedy(quant, prompts, max_new_tokens, batch)
    size_fp32, size_q = model_bytes(onnx_dir, "model.onnx"), model_bytes(onnx_dir, quantized_file)
    report: dict[str, Any] = {
        "model_file": quantized_file,
        "size_bytes": {"float32": size_fp32, "quantized": size_q, "ratio": size_q / size_fp32},
        "greedy_tokens_per_s": {"float32": ref_speed, "quantized": q_speed, "ratio": q_speed / ref_speed},
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "identical_completions": sum(a == b for a, b in zip(ref, got, strict=True)),
    }
    if check is not None and prompts:
        acc_ref = sum(check(i, o) for i, o in enumerate(ref)) / len(prompts)
        acc_q = sum(check(i, o) for i, o in enumerate(got)) / len(prompts)
        report["greedy_accuracy"] = {"float32": acc_ref, "quantized": acc_q, "change": acc_q - acc_ref}
    return report

"""``onnx/quantization.json``: what a quantized export costs, in the run folder (called by the export stage).

The prompts and the check come from the run's own ``eval`` section (``eval.tasks`` scored with
``eval.verifier``, greedy, ``eval.max_new_tokens``), so the accuracy change is measured on the task the run
was trained and evaluated for. Without ``eval.tasks`` only size and speed are reported (on the validation
prompts). ``gate`` repeats the figures the export gate checked (top-1 agreement and relative logit error
against PyTorch float32, from ``validation.json``) with the prompts they were measured on, so the report a
user reads about the quantized model says how close it is, not only what it costs.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from hdpo_core import layout
from service.spec.eval import EvalSpec


def gate_figures(validation: dict) -> dict:
    """The quantized graph's gate figures from the validation report, with what they were measured on."""
    q = validation["quantized"]
    keys = ("top1_agreement", "min_top1_agreement", "rel_logit_error", "max_rel_logit_error",
            "max_abs_logit_diff", "greedy_agreement", "greedy_identical")
    return {
        **{k: q[k] for k in keys},
        "passed": validation["passed"],
        "reference": "the merged model in PyTorch float32 (validation.json)",
        "prompts": validation["prompts"],
        "batch": validation["batch"],
        "decode_steps": validation["decode_steps"],
        "greedy_tokens": validation["greedy_tokens"],
    }


def write_quantization_report(onnx_dir: Path, quantized_file: str, raw_spec: dict, limit: int,
                              validation: dict) -> dict:
    """Measure float32 vs ``quantized_file`` and write ``onnx_dir/quantization.json`` (with the gate figures of
    ``validation``, the export's validation report); returns the report."""
    from transformers import AutoTokenizer

    from hdpo_core.eval.tasks import encode_prompt, load_tasks
    from hdpo_core.eval.verifiers import get_verifier
    from hdpo_core.export.onnx_quantize import quantization_report
    from hdpo_core.export.onnx_validate import PROMPTS

    try:
        eval_spec = EvalSpec.model_validate(raw_spec.get("eval") or {})
    except ValidationError:
        eval_spec = EvalSpec()  # the run's eval section is checked by the eval stage; measure without it
    tok = AutoTokenizer.from_pretrained(onnx_dir.parent / layout.MERGED)
    check, source = None, "validation prompts (no eval.tasks in the spec)"
    if eval_spec.tasks and limit > 0:
        verifier = get_verifier(eval_spec.verifier)
        tasks = load_tasks(eval_spec.tasks, verifier)[:limit]
        prompts = [encode_prompt(tok, t["prompt"]) for t in tasks]
        opts = {"timeout_s": eval_spec.timeout_s, "memory_mb": eval_spec.memory_mb}

        def check(i: int, tokens: list[int]) -> bool:
            return verifier.check(tasks[i], tok.decode(tokens, skip_special_tokens=True), opts)

        source = f"{eval_spec.tasks} (first {len(tasks)}, verifier {eval_spec.verifier}, greedy)"
    else:
        prompts = [tok(p)["input_ids"] for p in PROMPTS]
    report = quantization_report(
        onnx_dir, quantized_file, prompts=prompts, check=check, max_new_tokens=eval_spec.max_new_tokens
    )
    report["prompts_from"] = source
    report["gate"] = gate_figures(validation)
    (onnx_dir / layout.QUANT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report

"""The job spec's ``eval:`` section (imported by the JobSpec). Defaults live here only."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from service.spec.base import StrictModel


class LmEvalSpec(StrictModel):
    """lm-evaluation-harness on the evaluated model (docs/eval.md); results land in RUN/eval/ beside ours."""

    tasks: list[str] = Field(..., min_length=1, description="lm-eval task (or group) names, e.g. [gsm8k, ifeval, "
                             "mmlu_pro], or custom tasks from include_path.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt; None = each task's default.")
    limit: float | None = Field(None, gt=0, description="Documents per task: a count (>= 1) or a fraction (< 1); "
                                "None = all.")
    batch_size: int = Field(8, ge=1, description="lm-eval's batch size.")
    include_path: str | None = Field(None, description="Folder of custom lm-eval task YAML files (local data files).")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="lm-eval model backend: hf (transformers), vllm, or auto (vllm when installed and a "
        "GPU is present, else hf).")
    apply_chat_template: bool = Field(False, description="Render prompts with the tokenizer's chat template.")


#: ``preset: paper``: the H-DPO paper's layout (accuracy at four temperatures, pass@k up to 16, diversity);
#: fields the job sets itself win.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"temperatures": [0.25, 0.5, 0.75, 1.0], "n_samples": 16, "compare_reference": True},
}


class EvalSpec(StrictModel):
    """How the evaluation stage samples, verifies and measures (docs/eval.md)."""

    preset: Literal["paper"] | None = Field(
        None, description="Defaults for a known layout; 'paper' = temperatures [0.25, 0.5, 0.75, 1.0], n_samples 16, "
        "compare_reference true (the H-DPO paper's accuracy-vs-temperature, pass@k and diversity per alpha). Fields "
        "set in the job win.")

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            return {**PRESETS[data["preset"]], **{k: v for k, v in data.items() if v is not None or k == "preset"}}
        return data


    enabled: bool = Field(True, description="Run the eval stage after training (hdpo-tune run).")
    tasks: str | None = Field(None, description="Task file (JSONL): prompt + answer (math/exact/regex) or prompt + "
                              "test + entry_point (code). None = no sampling evaluation.")
    verifier: Literal["math", "math_verify", "code", "exact", "regex", "choice", "ifeval"] = Field(
        "math", description="How a sample is checked: math (final number), math_verify (Hugging Face's math-verify: "
        "LaTeX and expressions, symbolically; GSM8K's #### N kept), code (HumanEval tests in a sandbox), "
        "exact (string match), regex (answer is a pattern), choice (multiple choice, MMLU-Pro's answer "
        "extraction) or ifeval (IFEval's verifiable instructions, lm-evaluation-harness's checker).")
    n_samples: int = Field(8, ge=1, le=1024, description="Samples per prompt at each temperature (pass@k for k=1..n).")
    temperatures: list[float] = Field([0.25, 0.5, 1.0], min_length=1, description="Sampling temperatures; 0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling threshold; None = off.")
    max_new_tokens: int = Field(64, ge=1, description="Generation budget per sample.")
    seed: int = Field(0, description="Seed of the sampler's torch.Generator (results reproduce with it).")
    max_batch_size: int = Field(64, ge=1, description="Rows (prompt x sample) per forward pass while sampling.")
    eval_pairs: str | None = Field(None, description="Held-out preference pairs (TRL format) for loss, reward "
                                   "accuracy and entropy; None = data.eval in the pipeline.")
    compare_reference: bool = Field(True, description="Also evaluate the reference model (sampling + entropy) so the "
                                    "change made by training is visible.")
    max_eval_pairs: int | None = Field(512, ge=1, description="Use at most this many held-out pairs; None = all.")
    timeout_s: float = Field(5.0, gt=0, le=600, description="Code verifier: wall-clock limit per sample, seconds.")
    memory_mb: int = Field(512, ge=64, description="Code verifier: memory budget per sample, MiB: the sandbox's "
                           "/tmp (1/8, at most 64 MiB) and /dev/shm (1/32, at most 16 MiB) plus the address-space "
                           "limit (the rest).")
    allow_unsandboxed_code: bool = Field(
        False, description="Code verifier: run model-written programs even where the bubblewrap sandbox cannot "
        "start (then only an audit hook and resource limits stand between them and this machine). Off: eval "
        "refuses in one line instead. Only for code you trust (docs/eval.md).")

    lm_eval: LmEvalSpec | None = Field(None, description="Also run EleutherAI's lm-evaluation-harness on the model "
                                       "(tasks, few-shot, limit, batch size); None = off.")

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not 0 <= t <= 10]
        if bad:
            raise ValueError(f"temperatures must be in [0, 10] (0 = greedy), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"temperatures has duplicates: {v}")
        return v

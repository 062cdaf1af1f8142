"""The eval stage: turn an ``EvalSpec`` (and the run's settings) into one :func:`run_evaluation` call.

Called by ``hdpo-tune eval`` (:func:`evaluate_target`), ``hdpo-tune compare`` (:func:`compare_runs`) and the
pipeline after training (:func:`run_eval_stage`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from hdpo_core import artifact, layout
from hdpo_core.data import load_preference_rows
from hdpo_core.errors import InputError
from hdpo_core.eval.evaluate import SamplingSettings, run_evaluation
from hdpo_core.eval.report import write_report
from hdpo_core.eval.sandbox import require_sandbox
from hdpo_core.eval.targets import (
    EvalSide,
    ResolvedTarget,
    load_causal_lm,
    load_onnx_sampler,
    peft_reference,
    resolve_target,
)
from hdpo_core.eval.tasks import load_tasks
from hdpo_core.eval.verifiers import get_verifier
from hdpo_core.public_paths import public_paths
from hdpo_core.tokenize import tokenize_rows
from service.runfolder.run import Run
from service.spec.eval import EvalSpec
from service.spec.hdpo import HdpoSpec
from service.spec.job import DataSpec, ModelSpec, load_sections, sections_of
from service.stages.tracking import log_final_eval

#: alpha used to score a model trained outside any job (no job file, no run folder): plain DPO.
UNKNOWN_ALPHA = 1.0


def _device() -> tuple[str, torch.dtype | None]:
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", None)


def _settings(spec: EvalSpec) -> SamplingSettings:
    return SamplingSettings(n=spec.n_samples, temperatures=tuple(spec.temperatures), top_p=spec.top_p,
                            max_new_tokens=spec.max_new_tokens, seed=spec.seed, max_batch_size=spec.max_batch_size,
                            timeout_s=spec.timeout_s, memory_mb=spec.memory_mb,
                            allow_unsandboxed_code=spec.allow_unsandboxed_code)


def _load_sides(target: ResolvedTarget, reference_dir: Path | None, want_reference: bool
                ) -> tuple[EvalSide, EvalSide | None, Any]:
    device, dtype = _device()
    if target.kind == "onnx":
        sampler = load_onnx_sampler(target.model_dir)
        tokenizer = sampler.tokenizer
        policy = EvalSide("policy", None, sampler=sampler)
    else:
        model, tokenizer = load_causal_lm(target.model_dir, target.kind, device=device, dtype=dtype)
        policy = EvalSide("policy", model)
    reference = None
    if want_reference and reference_dir is not None:
        # a local folder (base, adapter, run) or, in the pipeline, the base model's Hub id
        ref_target = resolve_target(reference_dir) if reference_dir.is_dir() else ResolvedTarget(reference_dir, "hf")
        ref_model, _ = load_causal_lm(ref_target.model_dir, ref_target.kind, device=device, dtype=dtype)
        reference = EvalSide("reference", ref_model)
    elif want_reference and target.kind == "peft":
        reference = peft_reference(policy.model)  # type: ignore[arg-type]
    return policy, reference, tokenizer


def _pairs(path: str | None, tokenizer: Any, max_length: int, limit: int | None) -> list | None:
    if not path:
        return None
    rows, _ = load_preference_rows(path, on_bad_row="skip")
    pairs, _ = tokenize_rows(rows[:limit] if limit else rows, tokenizer, max_length=max_length,
                             overlong="truncate", on_bad_row="skip")
    return pairs


def evaluate(target: ResolvedTarget, spec: EvalSpec, *, out_dir: Path, reference_dir: Path | None,
             alpha: float, beta: float, eval_pairs_path: str | None, max_length: int) -> dict[str, Any]:
    """Evaluate one target and write the report into ``out_dir``; returns the results (with ``headline``)."""
    verifier = get_verifier(spec.verifier)
    tasks = load_tasks(spec.tasks, verifier) if spec.tasks else None
    sandbox = require_sandbox(spec.allow_unsandboxed_code) if tasks and verifier.name == "code" else None
    if sandbox and sandbox.startswith("UNSANDBOXED"):
        print(f"warning: eval: model-written code runs {sandbox}", file=sys.stderr)
    pairs_path = spec.eval_pairs or eval_pairs_path
    if tasks is None and not pairs_path and spec.lm_eval is None:
        raise InputError("eval: nothing to evaluate; give a task file (--tasks / eval.tasks), held-out "
                         "preference pairs (eval.eval_pairs / data.eval) and/or lm-eval tasks (--lm-eval / "
                         "eval.lm_eval)")
    harness = _harness_settings(spec)
    if harness is not None:  # names checked before any model loads: a typo costs nothing
        _check_harness_tasks(harness)
    results, samples = {"alpha": alpha, "beta": beta, "headline": {}}, []
    if tasks is not None or pairs_path:
        results, samples = _ours(target, spec, tasks=tasks, verifier_name=verifier.name, reference_dir=reference_dir,
                                 alpha=alpha, beta=beta, pairs_path=pairs_path, max_length=max_length)
    if harness is not None:  # after ours, whose models are freed by then
        from hdpo_core.eval.lm_harness import headline_numbers, run_harness

        results["lm_eval"] = run_harness(target.model_dir, target.kind, harness, device=_device()[0])
        results["headline"]["lm_eval"] = headline_numbers(results["lm_eval"])
    where = {"target": str(target.model_dir), "reference": results.pop("reference", None), "tasks": spec.tasks,
             "eval_pairs": pairs_path}
    # the report is shared: paths relative to the run folder (out_dir's parent) or by name, never the machine's
    where = public_paths(where, out_dir.parent)
    results = {"target": where["target"], "kind": target.kind, "reference": where["reference"],
               "tasks": where["tasks"], "eval_pairs": where["eval_pairs"], **({"sandbox": sandbox} if sandbox else {}),
               **results}
    results["files"] = [str(p) for p in write_report(results, samples, out_dir)]
    return results


def _ours(target: ResolvedTarget, spec: EvalSpec, *, tasks: list | None, verifier_name: str,
          reference_dir: Path | None, alpha: float, beta: float, pairs_path: str | None,
          max_length: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """hdpo-tune's own evaluation (sampling + held-out pairs); the models are freed when it returns."""
    policy, reference, tokenizer = _load_sides(target, reference_dir, spec.compare_reference or bool(pairs_path))
    pairs = _pairs(pairs_path, tokenizer, max_length, spec.max_eval_pairs) if policy.model is not None else None
    results, samples = run_evaluation(policy, reference, tokenizer, tasks=tasks, verifier=get_verifier(verifier_name),
                                      settings=_settings(spec), pairs=pairs, alpha=alpha, beta=beta,
                                      sample_reference=spec.compare_reference)
    ref = str(reference_dir) if reference_dir else ("adapter disabled" if reference else None)
    return {"reference": ref, **results}, samples


def _harness_settings(spec: EvalSpec) -> Any:
    if spec.lm_eval is None:
        return None
    from hdpo_core.eval.lm_harness import HarnessSettings

    lm = spec.lm_eval
    return HarnessSettings(tasks=tuple(lm.tasks), num_fewshot=lm.num_fewshot, limit=lm.limit,
                           batch_size=lm.batch_size, include_path=lm.include_path, backend=lm.backend,
                           apply_chat_template=lm.apply_chat_template)


def _check_harness_tasks(settings: Any) -> None:
    from hdpo_core.eval.lm_harness import task_manager, unknown_tasks

    problems = unknown_tasks(settings, task_manager(settings))
    if problems:
        raise InputError(problems[0])


def run_eval_stage(run_dir: Path, eval_spec: EvalSpec, *, model_dir: Path, reference_dir: Path | None,
                   alpha: float, beta: float, eval_pairs_path: str | None, max_length: int) -> dict[str, Any]:
    """The pipeline's eval stage: evaluate ``model_dir`` (final adapter or full model) into ``run_dir/eval``.

    ``reference_dir`` is the base model folder for full fine-tuning (``None`` for LoRA: the adapter is disabled).
    Returns the results; ``results["headline"]`` holds accuracy per temperature and entropy per model.
    """
    target = resolve_target(model_dir)
    out = Path(run_dir) / layout.EVAL
    # built aside and renamed in whole (with its manifest): a failed eval leaves the previous report, never half
    with artifact.building(out, required=(layout.EVAL_RESULTS,)) as tmp:
        results = evaluate(target, eval_spec, out_dir=tmp, reference_dir=reference_dir, alpha=alpha, beta=beta,
                           eval_pairs_path=eval_pairs_path, max_length=max_length)
    results["files"] = [str(out / Path(f).name) for f in results["files"]]
    return results


def headline_lines(results: dict[str, Any]) -> list[str]:
    """The eval stage's one-line summaries (the pipeline prints them)."""
    head = results.get("headline", {})
    lines = []
    chance = f" (chance {head['chance_accuracy']:.3f})" if head.get("chance_accuracy") is not None else ""
    for name, accs in head.get("accuracy", {}).items():
        per_t = ", ".join(f"T={t} {a:.3f}" for t, a in accs.items())
        lines.append(f"{name} accuracy: {per_t}{chance}")
    for key, label in (("entropy_chosen", "entropy on held-out chosen"), ("entropy_sampled", "entropy on own samples")):
        if head.get(key):
            lines.append(f"{label} (nats/token): " + ", ".join(f"{k} {v:.4f}" for k, v in head[key].items()))
    if head.get("lm_eval"):
        lines.append("lm-eval: " + ", ".join(f"{k} {v:.3f}" for k, v in head["lm_eval"].items()))
    if head.get("reward_accuracy") is not None:
        lines.append(f"held-out reward accuracy {head['reward_accuracy']:.3f}, loss {head.get('loss', float('nan')):.4f}")
    return lines


def run_eval_for_job(run: Run) -> dict[str, Any]:
    """The pipeline's eval stage: evaluate ``RUN/final`` with the run's ``eval:`` section.

    Returns ``{"headline": [lines], "numbers": results["headline"], "results": path}``.
    """
    spec = run.spec
    results = run_eval_stage(
        run.path, spec.eval or EvalSpec(), model_dir=run.path / layout.FINAL,
        reference_dir=None if spec.lora is not None else Path(spec.model.name_or_path),
        alpha=final_alpha(spec.hdpo.core.alpha, run.path), beta=spec.hdpo.core.beta, eval_pairs_path=spec.data.eval,
        max_length=spec.data.max_length)
    log_final_eval(spec, run.path, results["headline"])
    return {"headline": headline_lines(results), "numbers": results["headline"],
            "results": str(run.path / layout.EVAL / layout.EVAL_RESULTS)}


def final_alpha(alpha: float | str, run_dir: Path | None) -> float:
    """The alpha the policy was trained with at its last step: the spec's number, or for ``auto`` and
    schedules the last ``alpha`` in the run's metrics.jsonl (1.0 when unknown)."""
    if run_dir is not None and (Path(run_dir) / layout.METRICS).exists():
        from hdpo_core.metrics_log import read_metrics

        records = read_metrics(Path(run_dir))
        if records and isinstance(records[-1].get("alpha"), int | float):
            return float(records[-1]["alpha"])
    return float(alpha) if isinstance(alpha, int | float) else UNKNOWN_ALPHA


@dataclass(frozen=True)
class JobContext:
    """What ``hdpo-tune eval`` takes from a job: its ``eval:`` section and the values that score pairs. From
    ``--job FILE`` (only these sections are read), else from the evaluated run folder, else the defaults."""

    eval: EvalSpec | None = None
    hdpo: HdpoSpec | None = None
    base_model: str | None = None
    eval_pairs: str | None = None
    max_length: int = DataSpec.model_fields["max_length"].default


def _job_context(job: str | None, target: ResolvedTarget) -> JobContext:
    if job is not None:
        sections = load_sections(Path(job), ("model", "data", "hdpo", "eval"))
        model, data, ev, hd = (sections[k] for k in ("model", "data", "eval", "hdpo"))
        data = data if isinstance(data, DataSpec) else None
        return JobContext(eval=ev if isinstance(ev, EvalSpec) else None, hdpo=hd if isinstance(hd, HdpoSpec) else None,
                          base_model=model.name_or_path if isinstance(model, ModelSpec) else None,
                          eval_pairs=data.eval if data else None,
                          max_length=data.max_length if data else JobContext.max_length)
    if target.run_dir is not None:
        spec = Run.from_folder(target.run_dir).spec
        return JobContext(eval=spec.eval, hdpo=spec.hdpo, base_model=spec.model.name_or_path,
                          eval_pairs=spec.data.eval, max_length=spec.data.max_length)
    return JobContext()


def evaluate_target(target_path: str, *, job: str | None = None, overrides: dict[str, Any] | None = None,
                    ref: str | None = None, out: str | None = None) -> dict[str, Any]:
    """``hdpo-tune eval``: evaluate a model/adapter/ONNX/run folder. CLI options in ``overrides`` win over the
    job's ``eval:`` section, which wins over the defaults."""
    if out is None and (Path(target_path) / layout.RESOLVED_SPEC).exists():  # a run folder: writes RUN/eval
        from service.runfolder import ownership

        ownership.open_existing(Path(target_path))  # its lock, and no link where its own entries are
    target = resolve_target(target_path)
    ctx = _job_context(job, target)
    section = ctx.eval.model_dump() if ctx.eval else {}
    overrides = dict(overrides or {})
    harness = {k: v for k, v in (overrides.pop("lm_eval", None) or {}).items() if v is not None}
    if harness:  # --lm-eval* options refine the job's eval.lm_eval section
        section["lm_eval"] = {**(section.get("lm_eval") or {}), **harness}
    section.update({k: v for k, v in overrides.items() if v is not None})
    try:
        spec = EvalSpec.model_validate(section)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"eval.{where}: {first['msg']} (from the job's eval: section or the command line)") from None
    reference = Path(ref) if ref else None
    if reference is None and target.kind != "peft" and ctx.base_model and Path(ctx.base_model).is_dir():
        reference = Path(ctx.base_model)
    hdpo = ctx.hdpo or HdpoSpec()
    alpha = final_alpha(hdpo.core.alpha if ctx.hdpo else UNKNOWN_ALPHA, target.run_dir)
    if out is None and target.run_dir:  # the run's own eval/: replaced whole, as by the pipeline's stage
        with artifact.building(target.run_dir / layout.EVAL, required=(layout.EVAL_RESULTS,)) as tmp:
            results = evaluate(target, spec, out_dir=tmp, reference_dir=reference, alpha=alpha, beta=hdpo.core.beta,
                               eval_pairs_path=ctx.eval_pairs, max_length=ctx.max_length)
        results["files"] = [str(target.run_dir / layout.EVAL / Path(f).name) for f in results["files"]]
        return results
    out_dir = Path(out) if out else Path("eval_results") / target.model_dir.name
    return evaluate(target, spec, out_dir=out_dir, reference_dir=reference, alpha=alpha, beta=hdpo.core.beta,
                    eval_pairs_path=ctx.eval_pairs, max_length=ctx.max_length)


def compare_runs(run_dirs: list[str], *, out: str | None = None) -> Path:
    """``hdpo-tune compare``: one PNG and one markdown table over several runs' eval/results.json."""
    from hdpo_core.eval.compare import compare

    out_dir = Path(out) if out else Path("compare")
    folders = [Path(r) for r in run_dirs]
    return compare(folders, out_dir, alphas={f: _trained_alpha(f) for f in folders})


def _trained_alpha(folder: Path) -> float | None:
    """A run folder's numeric ``hdpo.alpha`` (None for 'auto', a schedule's end is in its results, or a
    folder that is not a run): what the comparison table shows."""
    from service.spec.yaml_io import load_yaml

    resolved = folder / layout.RESOLVED_SPEC
    if not resolved.is_file():
        return None
    data = load_yaml(resolved)
    hdpo = sections_of(data, ("hdpo",), source=resolved)["hdpo"] if isinstance(data, dict) else None
    alpha = hdpo.core.alpha if isinstance(hdpo, HdpoSpec) else None
    return float(alpha) if isinstance(alpha, int | float) else None


def evaluate_cli(target: str, *, job: Any = None, tasks: str | None = None, ref: str | None = None,
                 out: str | None = None, n: int | None = None, temperatures: str | None = None,
                 top_p: float | None = None, seed: int | None = None, max_new_tokens: int | None = None,
                 verifier: str | None = None, eval_pairs: str | None = None, compare_reference: bool | None = None,
                 lm_eval: dict[str, Any] | None = None, log: Any = print) -> dict[str, Any]:
    """``hdpo-tune eval`` options -> :func:`evaluate_target`; logs the headline and the written files."""
    temps = None
    if temperatures is not None:
        try:
            temps = [float(t) for t in temperatures.split(",") if t.strip()]
        except ValueError:
            raise InputError(f"--temperatures: '{temperatures}' is not a comma-separated list of numbers "
                             "(e.g. 0.25,0.5,1.0)") from None
    looks_local = eval_pairs is not None and (Path(eval_pairs).suffix or eval_pairs.startswith((".", "/", "~")))
    if looks_local and not Path(eval_pairs).expanduser().exists():  # a Hub dataset id is left to the loader
        raise InputError(f"--eval-pairs: {eval_pairs}: file not found (relative to the current folder "
                         f"{Path.cwd()}); give the held-out pairs file's path")
    overrides = {"tasks": tasks, "n_samples": n, "temperatures": temps, "top_p": top_p, "seed": seed,
                 "max_new_tokens": max_new_tokens, "verifier": verifier, "eval_pairs": eval_pairs,
                 "compare_reference": compare_reference, "lm_eval": lm_eval}
    results = evaluate_target(target, job=str(job) if job else None, overrides=overrides, ref=ref, out=out)
    for line in headline_lines(results):
        log(line)
    log(f"wrote {Path(results['files'][0]).parent}")
    return results

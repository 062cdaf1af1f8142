"""`hdpo-tune sweep`: train and evaluate several alphas, pick the best by a named metric, ship the winner.

The variants share what does not depend on alpha: the tokenised data (memoised in-process by the train
stage) and the reference log-probs (``train.precompute_ref_logps`` forced on, with one cache folder for the
whole sweep, so only the first variant runs the reference model). Each variant is an ordinary run folder
``OUTPUT/sweep/alpha-A/`` (resumable, idempotent); the winner then goes through merge, export and push.

Selection metrics (read from each variant's ``eval/results.json``):

* ``accuracy@tT`` — mean accuracy of samples at temperature T (higher is better), e.g. ``accuracy@t0.5``;
* ``pass@K`` or ``pass@K@tT`` — unbiased pass@K at temperature T (default 1.0), e.g. ``pass@8``;
* ``entropy~X`` — policy entropy on held-out chosen completions closest to X nats/token;
* ``reward_accuracy`` (higher) and ``loss`` (lower) — held-out preference metrics;
* ``lm_eval:TASK/METRIC[/FILTER]`` — an lm-evaluation-harness number (``eval.lm_eval``) as the eval headline
  names it, e.g. ``lm_eval:gsm8k/exact_match/strict-match``, ``lm_eval:arc_easy/acc``; lower wins where
  lm-eval says lower is better (perplexity).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdpo_core import layout
from hdpo_core.errors import InputError, RunError
from hdpo_core.io import atomic_write_json, atomic_write_text
from hdpo_core.layout import RunLayout
from service.runfolder import ownership
from service.spec.job import dump_yaml, load_spec, spec_to_dict
from service.spec.yaml_io import load_yaml

METRIC_HELP = "accuracy@tT, pass@K[@tT], entropy~X, reward_accuracy, loss or lm_eval:TASK/METRIC"


@dataclass(frozen=True)
class Metric:
    kind: str
    temperature: float = 1.0
    k: int = 1
    target: float = 0.0
    name: str = ""  # lm_eval: "TASK/METRIC"

    def score(self, results: dict[str, Any]) -> float:
        """Higher is better; NaN when the results lack the metric."""
        try:
            if self.kind == "accuracy":
                return float(_at_temperature(results["sampling"]["policy"], self.temperature)["accuracy"])
            if self.kind == "pass":
                curve = _at_temperature(results["sampling"]["policy"], self.temperature)["pass_at_k"]
                if self.k > len(curve):
                    raise InputError(f"--select pass@{self.k}: only {len(curve)} samples per prompt were drawn; raise "
                                     "eval.n_samples or choose a smaller k")
                return float(curve[self.k - 1])
            if self.kind == "entropy":
                return -abs(float(results["headline"]["entropy_chosen"]["policy"]) - self.target)
            if self.kind == "lm_eval":
                return _lm_eval_score(results, self.name)
            if self.kind == "reward_accuracy":
                return float(results["headline"]["reward_accuracy"])
            return -float(results["headline"]["loss"])
        except (KeyError, TypeError, ValueError):
            return math.nan


def _lm_eval_score(results: dict[str, Any], name: str) -> float:
    value = float(results["headline"]["lm_eval"][name])
    task, metric = name.split("/")[:2]
    higher = results["lm_eval"].get("higher_is_better", {}).get(task, {}).get(metric, True)
    return value if higher else -value


def _at_temperature(sampling: dict[str, Any], temperature: float) -> dict[str, Any]:
    for entry in sampling.values():
        if abs(float(entry["temperature"]) - temperature) < 1e-9:
            return entry
    temps = sorted(float(e["temperature"]) for e in sampling.values())
    raise InputError(f"--select: temperature {temperature} was not evaluated (eval.temperatures: {temps})")


def parse_metric(text: str) -> Metric:
    t = text.strip()
    if m := re.fullmatch(r"accuracy@t([0-9.]+)", t):
        return Metric("accuracy", temperature=float(m.group(1)))
    if m := re.fullmatch(r"pass@([0-9]+)(?:@t([0-9.]+))?", t):
        return Metric("pass", k=int(m.group(1)), temperature=float(m.group(2) or 1.0))
    if m := re.fullmatch(r"entropy~([0-9.]+)", t):
        return Metric("entropy", target=float(m.group(1)))
    if m := re.fullmatch(r"lm_eval:([^/\s]+/\S+)", t):
        return Metric("lm_eval", name=m.group(1))
    if t in ("reward_accuracy", "loss"):
        return Metric(t)
    raise InputError(f"--select: unknown metric '{text}'; use {METRIC_HELP}")


def parse_alphas(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--alpha: '{text}' is not a comma-separated list of numbers, e.g. 0.8,0.9,1.0") from None
    if len(values) < 2 or any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise InputError(f"--alpha: need at least two distinct values > 0, got '{text}'")
    return values


def variant_jobs(job: Path, alphas: list[float]) -> tuple[Path, list[tuple[float, Path]]]:
    """Write one job file per alpha under ``OUTPUT/sweep/``; returns the sweep folder and the jobs."""
    spec = load_spec(job)
    if spec.eval is None or not spec.eval.enabled or not spec.eval.tasks:
        raise InputError("eval.tasks: a sweep picks its winner from the eval stage; give eval.tasks (and "
                         "eval.n_samples/temperatures for the metric)")
    base = spec_to_dict(spec)
    owner = ownership.open_folder(Path(spec.output.dir))  # hdpo-tune's, like a run folder: locked, no links inside
    ownership.record(owner, [layout.SWEEP])
    root = owner / layout.SWEEP
    root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for a in alphas:
        variant = json.loads(json.dumps(base))
        variant["hdpo"].update(alpha=a, alpha_schedule="constant", target_entropy=None)
        variant["train"].update(precompute_ref_logps=True, ref_cache_dir=str(root / layout.SWEEP_REF_CACHE))
        variant["output"]["dir"] = str(root / layout.sweep_run(a))
        for section in ("hub",):  # the winner alone is pushed
            variant[section] = None
        variant["export"] = None
        variant["merge"] = None
        path = root / layout.sweep_job(a)
        atomic_write_text(path, dump_yaml(variant))
        jobs.append((a, path))
    return root, jobs


def run_sweep(job: Path, *, alphas: list[float], select: str, force: bool = False) -> dict[str, Any]:
    from service.stages.pipeline import run_job

    metric = parse_metric(select)
    root, jobs = variant_jobs(job, alphas)
    scores: dict[float, float] = {}
    for a, variant in jobs:
        print(f"sweep: alpha={a:g}", file=sys.stderr)
        run_job(variant, force=force, only=("train", "eval"))
        results_file = RunLayout(root / layout.sweep_run(a)).eval_results
        results = json.loads(results_file.read_text(encoding="utf-8"))
        scores[a] = metric.score(results)
    ranked = sorted((a for a in scores if not math.isnan(scores[a])), key=lambda a: -scores[a])
    if not ranked:
        raise RunError(f"sweep: no variant has the metric '{select}' in its eval results")
    winner = ranked[0]
    from service.stages.eval import compare_runs

    compare_runs([str(root / layout.sweep_run(a)) for a, _ in jobs], out=str(root))
    report = {"metric": select, "scores": {f"{a:g}": scores[a] for a in scores}, "winner": winner,
              "winner_run": str(root / layout.sweep_run(winner))}
    atomic_write_json(root / layout.SWEEP_REPORT, report, indent=1)
    lines = [f"# Alpha sweep, selected by `{select}`", "", "| alpha | score |", "|---|---|"]
    lines += [f"| {a:g}{' (winner)' if a == winner else ''} | {scores[a]:.4f} |" for a in sorted(scores)]
    atomic_write_text(root / layout.SWEEP_SUMMARY, "\n".join(lines) + "\n")
    print(f"sweep: winner alpha={winner:g} ({select} = {scores[winner]:.4f}); report {root / layout.SWEEP_SUMMARY}")
    _ship_winner(job, root, winner, force)
    return report


def _ship_winner(job: Path, root: Path, winner: float, force: bool) -> None:
    """Run the original job's merge/export/push stages on the winner's run folder."""
    from service.stages.pipeline import run_job

    spec = spec_to_dict(load_spec(job))
    if not any(spec.get(k) for k in ("merge", "export", "hub")):
        return
    variant = load_yaml(root / layout.sweep_job(winner))
    for key in ("merge", "export", "hub"):
        variant[key] = spec.get(key)
    path = root / layout.SWEEP_WINNER_JOB
    atomic_write_text(path, dump_yaml(variant))
    run_job(path, force=force, only=("merge", "export", "push"))

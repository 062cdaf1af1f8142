"""Write an evaluation: ``results.json``, ``samples.jsonl``, ``summary.md`` and PNG plots (matplotlib Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hdpo_core.layout import EVAL_RESULTS, EVAL_SAMPLES, EVAL_SUMMARY


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _fmt(x: object, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"
    return "n/a" if x is None else str(x)


def summary_markdown(results: dict[str, Any]) -> str:
    """A readable summary: sampling table per model and temperature, preference metrics, entropy."""
    lines = [f"# Evaluation of `{results.get('target', '?')}`", ""]
    lines.append(f"alpha = {_fmt(results.get('alpha'))}, beta = {_fmt(results.get('beta'))}, "
                 f"verifier = {results.get('verifier')}, seed = {results.get('settings', {}).get('seed')}")
    sampling = results.get("sampling") or {}
    if sampling:
        n = results["settings"]["n"]
        chance = results.get("chance_accuracy")
        acc = f"accuracy (chance {_fmt(chance)})" if chance is not None else "accuracy"
        lines += ["", f"## Sampling ({results.get('num_tasks')} tasks x {n} samples)", "",
                  f"| model | temperature | {acc} | pass@1 | pass@{n} | entropy (nats/token) | distinct-2 | "
                  "unique answers | pairwise similarity | mean new tokens |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, per_temp in sampling.items():
            for key, m in per_temp.items():
                d = m["diversity"]
                lines.append(f"| {name} | {key} | {_fmt(m['accuracy'])} | {_fmt(m['pass_at_k'][0])} | "
                             f"{_fmt(m['pass_at_k'][-1])} | {_fmt(m['entropy_sampled'])} | {_fmt(d['distinct_2'])} | "
                             f"{_fmt(d['unique_answers'])} | {_fmt(d['pairwise_similarity'])} | "
                             f"{_fmt(m['mean_new_tokens'], 1)} |")
        lines += _verifier_metrics_table(sampling)
    pref = results.get("preference")
    if pref:
        lines += ["", "## Preference metrics (held-out pairs)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, 4)} |" for k, v in pref.items()]
    lines += _lm_eval_table(results.get("lm_eval"))
    ent = results.get("headline", {})
    if ent.get("entropy_chosen") or ent.get("entropy_sampled"):
        lines += ["", "## Entropy (mean per token, nats)", "", "| model | chosen completions (teacher-forced) | "
                  f"own samples (T={_fmt(ent.get('entropy_sampled_temperature'), 2)}) |", "|---|---|---|"]
        for name in ("policy", "reference"):
            a, b = ent.get("entropy_chosen", {}).get(name), ent.get("entropy_sampled", {}).get(name)
            if a is not None or b is not None:
                lines.append(f"| {name} | {_fmt(a, 4)} | {_fmt(b, 4)} |")
    return "\n".join(lines) + "\n"


def _lm_eval_table(harness: dict[str, Any] | None) -> list[str]:
    """lm-evaluation-harness's numbers, with lm-eval's own metric names (``metric,filter``) and stderr."""
    if not harness:
        return []
    lines = ["", f"## lm-evaluation-harness {harness.get('lm_eval_version') or ''} ({harness.get('backend')} backend)",
             "", "| task | metric | value | stderr | documents |", "|---|---|---|---|---|"]
    for task, metrics in harness.get("tasks", {}).items():
        for name, value in metrics.items():
            if "_stderr" in name:
                continue
            metric, _, flt = name.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{flt}" if flt else f"{metric}_stderr")
            lines.append(f"| {task} | {name} | {_fmt(value, 4)} | {_fmt(stderr, 4)} | "
                         f"{harness.get('n_samples', {}).get(task, 'n/a')} |")
    return lines


def _verifier_metrics_table(sampling: dict[str, Any]) -> list[str]:
    """The verifier's own numbers (IFEval's four accuracies, choice's extraction failures), one row per
    model and temperature."""
    keys = sorted({k for per_temp in sampling.values() for m in per_temp.values() for k in m.get("verifier_metrics", {})})
    if not keys:
        return []
    lines = ["", "## Verifier metrics (fraction of samples; instruction level: of instructions)", "",
             "| model | temperature | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, per_temp in sampling.items():
        for key, m in per_temp.items():
            vm = m.get("verifier_metrics", {})
            lines.append(f"| {name} | {key} | " + " | ".join(_fmt(vm.get(k)) for k in keys) + " |")
    return lines


def plot_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """pass@k per temperature, accuracy vs temperature, entropy bars (policy vs reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    sampling = results.get("sampling") or {}
    if sampling:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for name, per_temp in sampling.items():
            style = "-" if name == "policy" else "--"
            for key, m in per_temp.items():
                ks = list(range(1, len(m["pass_at_k"]) + 1))
                ax1.plot(ks, m["pass_at_k"], style, marker="o", label=f"{name} T={key}")
            temps = [m["temperature"] for m in per_temp.values()]
            ax2.plot(temps, [m["accuracy"] for m in per_temp.values()], style, marker="o", label=name)
        ax1.set(xlabel="k", ylabel="pass@k", title="pass@k (coverage)", ylim=(0, 1.02))
        ax2.set(xlabel="temperature", ylabel="accuracy (mean over samples)", title="accuracy vs temperature",
                ylim=(0, 1.02))
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "sampling.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    head = results.get("headline", {})
    groups = [("chosen (teacher-forced)", head.get("entropy_chosen", {})), ("own samples", head.get("entropy_sampled", {}))]
    groups = [(g, v) for g, v in groups if v]
    if groups:
        fig, ax = plt.subplots(figsize=(6, 4))
        width = 0.38
        for j, name in enumerate(("policy", "reference")):
            vals = [v.get(name) or 0.0 for _, v in groups]
            ax.bar([i + (j - 0.5) * width for i in range(len(groups))], vals, width, label=name)
        ax.set_xticks(range(len(groups)), [g for g, _ in groups])
        ax.set(ylabel="mean entropy (nats/token)", title="policy vs reference entropy")
        ax.legend()
        fig.tight_layout()
        written.append(out_dir / "entropy.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def write_report(results: dict[str, Any], samples: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write every artifact; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / EVAL_RESULTS).write_text(json.dumps(clean(results), indent=2) + "\n", encoding="utf-8")
    with (out_dir / EVAL_SAMPLES).open("w", encoding="utf-8") as fh:
        for rec in samples:
            fh.write(json.dumps(clean(rec)) + "\n")
    (out_dir / EVAL_SUMMARY).write_text(summary_markdown(results), encoding="utf-8")
    return [out_dir / EVAL_RESULTS, out_dir / EVAL_SAMPLES, out_dir / EVAL_SUMMARY,
            *plot_results(results, out_dir)]

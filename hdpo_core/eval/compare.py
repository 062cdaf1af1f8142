"""Compare several runs' evaluations (e.g. an alpha sweep): one PNG (pass@k, accuracy vs temperature,
entropy vs alpha) and one markdown table, from each ``RUN/eval/results.json``. The alpha each run was trained
with comes from the caller (the service reads the run's spec); the core never reads a job spec."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hdpo_core.errors import InputError
from hdpo_core.io import atomic_write_text
from hdpo_core.layout import EVAL, EVAL_RESULTS

from .report import _fmt


def load_run(run: Path, alpha: float | None = None) -> dict[str, Any]:
    """``results.json`` of a run folder (or an eval folder, or the file itself), with ``name`` and ``alpha``
    (``alpha`` when given: the run's numeric ``hdpo.alpha``; else the alpha its evaluation recorded)."""
    candidates = [run / EVAL / EVAL_RESULTS, run / EVAL_RESULTS, run]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise InputError(f"{run}: no {EVAL}/{EVAL_RESULTS}; run `hdpo-tune eval {run}` first")
    results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    results["alpha"] = alpha if alpha is not None else results.get("alpha")
    results["name"] = run.name if run.is_dir() else run.parent.name
    return results


def _policy(results: dict[str, Any]) -> dict[str, Any]:
    return (results.get("sampling") or {}).get("policy") or {}


def compare_table(runs: list[dict[str, Any]]) -> str:
    """One row per run (the paper's table per alpha): accuracy and pass@n per temperature, diversity and the
    verifier's own numbers at the highest temperature, entropy, reward accuracy, chance level, lm-eval."""
    temps = sorted({k for r in runs for k in _policy(r)}, key=float)
    top = temps[-1] if temps else None
    vm = sorted({k for r in runs for k in _policy(r).get(top, {}).get("verifier_metrics", {})}) if top else []
    harness = sorted({k for r in runs for k in r.get("headline", {}).get("lm_eval", {})})
    chance = any(r.get("chance_accuracy") is not None for r in runs)
    head = ["run", "alpha", *[f"acc T={t}" for t in temps], *[f"pass@n T={t}" for t in temps],
            *([f"distinct-2 T={top}", f"unique answers T={top}"] if top else []), *[f"{k} T={top}" for k in vm],
            *(["chance"] if chance else []), "entropy chosen", "entropy samples", "reward acc.",
            *[f"lm-eval {k}" for k in harness]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        pol, h = _policy(r), r.get("headline", {})
        cells = [r["name"], _fmt(r.get("alpha"))]
        cells += [_fmt(pol[t]["accuracy"]) if t in pol else "n/a" for t in temps]
        cells += [_fmt(pol[t]["pass_at_k"][-1]) if t in pol else "n/a" for t in temps]
        if top:
            div = pol.get(top, {}).get("diversity", {})
            cells += [_fmt(div.get("distinct_2")), _fmt(div.get("unique_answers"))]
            cells += [_fmt(pol.get(top, {}).get("verifier_metrics", {}).get(k)) for k in vm]
        cells += [_fmt(r.get("chance_accuracy"))] if chance else []
        cells += [_fmt(h.get("entropy_chosen", {}).get("policy"), 4), _fmt(h.get("entropy_sampled", {}).get("policy"), 4),
                  _fmt(h.get("reward_accuracy"))]
        cells += [_fmt(h.get("lm_eval", {}).get(k)) for k in harness]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(run_dirs: list[Path], out_dir: Path, alphas: dict[Path, float | None] | None = None) -> Path:
    """Write ``out_dir/compare.png`` and ``out_dir/compare.md``; returns the markdown path. ``alphas``: the
    trained alpha per run folder where the caller knows it (see :func:`load_run`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise InputError("compare: give at least one run folder")
    runs = sorted((load_run(r, (alphas or {}).get(r)) for r in run_dirs), key=lambda r: (r.get("alpha") is None, r.get("alpha") or 0))
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    styles = ["-", "--", ":", "-."]
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        pol = _policy(r)
        for j, (t, m) in enumerate(sorted(pol.items(), key=lambda kv: float(kv[0]))):
            ks = range(1, len(m["pass_at_k"]) + 1)
            ax1.plot(ks, m["pass_at_k"], styles[j % 4], color=color, label=f"{r['name']} T={t}")
        if pol:
            ax2.plot([m["temperature"] for m in pol.values()], [m["accuracy"] for m in pol.values()], "-o",
                     color=color, label=f"{r['name']} (alpha={_fmt(r.get('alpha'), 2)})")
    ax1.set(xlabel="k", ylabel="pass@k", title="pass@k (line style = temperature)", ylim=(0, 1.02))
    ax2.set(xlabel="temperature", ylabel="accuracy", title="accuracy vs temperature", ylim=(0, 1.02))
    for key, label, marker in (("entropy_sampled", "own samples", "o"), ("entropy_chosen", "held-out chosen", "s")):
        pts = [(r["alpha"], r.get("headline", {}).get(key, {}).get("policy")) for r in runs]
        pts = [(a, e) for a, e in pts if a is not None and e is not None and math.isfinite(e)]
        if pts:
            ax3.plot([a for a, _ in pts], [e for _, e in pts], "-" + marker, label=f"policy, {label}")
        refs = [r.get("headline", {}).get(key, {}).get("reference") for r in runs]
        refs = [e for e in refs if e is not None]
        if refs:
            ax3.axhline(sum(refs) / len(refs), linestyle="--", color="gray", label=f"reference, {label}")
    ax3.set(xlabel="alpha", ylabel="entropy (nats/token)", title="entropy vs alpha")
    for ax in (ax1, ax2, ax3):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "compare.png", dpi=100)
    plt.close(fig)
    md = out_dir / "compare.md"
    atomic_write_text(md, "# Run comparison\n\n" + compare_table(runs) + "\n![comparison](compare.png)\n")
    return md

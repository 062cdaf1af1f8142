"""Reproduce the H-DPO paper's alpha sweep on the shipped demo model, with seeds, and write a report.

Why: the paper (arXiv 2411.07595) claims that alpha < 1 sharpens the policy and improves accuracy and
coverage at temperature 1 over DPO (alpha = 1), and that alpha > 1 keeps diversity. This script measures
those claims on `examples/demo` with the project's own pipeline: one `hdpo-tune run` per (alpha, seed), all
with the same data, steps and training regime (taken from a job file, by default `examples/quickstart.yaml`),
plus the base (SFT) model evaluated with the same sampler seeds. It aggregates mean and spread over seeds
into `table.md` and three PNG plots, and keeps every run folder so results can be re-read or resumed.

    python examples/reproduce/run.py                                # full scale: 3 seeds, n=64, all 128 tasks
    python examples/reproduce/run.py --seeds 2 --n-samples 8 --max-tasks 64 --jobs 2 --threads 1   # CPU scale

Runs already finished in --out are reused (delete the folder to redo them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JOB = ROOT / "examples" / "quickstart.yaml"
CLI = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main())"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", type=Path, default=DEFAULT_JOB, help="job whose model, data, hdpo and train sections set "
                   "the regime (alpha, seeds, eval and output are replaced)")
    p.add_argument("--alphas", default="0.8,0.9,1.0,1.1,1.2")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (train.seed and eval.seed)")
    p.add_argument("--temperatures", default="0.25,0.5,1.0")
    p.add_argument("--n-samples", type=int, default=64, help="samples per task and temperature (pass@k, k<=n)")
    p.add_argument("--max-tasks", type=int, default=0, help="use the first N eval tasks (0 = all)")
    p.add_argument("--steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job field, e.g. --set hdpo.sft_weight=0 (repeatable)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch default)")
    p.add_argument("--report-only", action="store_true", help="aggregate finished runs, train nothing")
    return p.parse_args(argv)


# ---------------------------------------------------------------- job specs


def _set(spec: dict[str, Any], dotted: str, value: Any) -> None:
    cur = spec
    keys = dotted.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value


def _abs(path: str | None, base: Path) -> str | None:
    """Job paths are relative to the job file; the generated jobs live elsewhere, so make them absolute."""
    if path is None:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else (base / p).resolve()) if (base / p).exists() or p.is_absolute() else path


def base_spec(args: argparse.Namespace, tasks: Path) -> dict[str, Any]:
    """The regime of --job with eval replaced by the sweep's sampling settings and merge/export/push off."""
    job = yaml.safe_load(args.job.read_text(encoding="utf-8"))
    here = args.job.resolve().parent
    spec = {k: job[k] for k in ("model", "data", "hdpo", "train", "lora") if job.get(k) is not None}
    spec["model"]["name_or_path"] = _abs(spec["model"]["name_or_path"], here)
    for key in ("train", "eval"):
        if key in spec["data"]:
            spec["data"][key] = _abs(spec["data"][key], here)
    spec["train"].update({"save_every": 10**6, "eval_every": None})
    if args.steps:
        spec["train"]["max_steps"] = args.steps
    for item in args.set:
        key, value = item.split("=", 1)
        _set(spec, key, yaml.safe_load(value))
    spec["eval"] = {"tasks": str(tasks), "verifier": "math", "n_samples": args.n_samples,
                    "temperatures": [float(t) for t in args.temperatures.split(",")],
                    "max_new_tokens": job.get("eval", {}).get("max_new_tokens", 48), "compare_reference": False}
    spec["merge"] = {"enabled": False}
    return spec


def task_file(args: argparse.Namespace) -> Path:
    """The eval tasks of --job, cut to the first --max-tasks rows (same subset for every run)."""
    job = yaml.safe_load(args.job.read_text(encoding="utf-8"))
    src = Path(_abs(job["eval"]["tasks"], args.job.resolve().parent))
    if not args.max_tasks:
        return src
    rows = src.read_text(encoding="utf-8").splitlines()[: args.max_tasks]
    dst = args.out / f"tasks_{args.max_tasks}.jsonl"
    dst.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return dst


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _call(cmd: list[str], log: Path, threads: int) -> None:
    with log.open("w", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(threads), cwd=ROOT)
    if rc:
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}; see {log}")


def train_and_eval(spec: dict[str, Any], alpha: float, seed: int, args: argparse.Namespace) -> Path:
    run = args.out / f"alpha{alpha:g}_seed{seed}"
    if (run / "eval" / "results.json").exists():
        return run
    job = json.loads(json.dumps(spec))
    job["hdpo"]["alpha"] = alpha
    job["train"]["seed"] = seed
    job["eval"]["seed"] = seed
    job["output"] = {"dir": str(run)}
    run.mkdir(parents=True, exist_ok=True)
    path = args.out / f"alpha{alpha:g}_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    print(f"run alpha={alpha:g} seed={seed}", flush=True)
    _call([*CLI, "run", str(path)], args.out / f"alpha{alpha:g}_seed{seed}.log", args.threads)
    return run


def eval_base(spec: dict[str, Any], seed: int, args: argparse.Namespace) -> Path:
    """The SFT model, sampled with the same tasks, temperatures and sampler seed as the trained runs."""
    out = args.out / f"base_seed{seed}"
    if (out / "results.json").exists():
        return out
    job = json.loads(json.dumps(spec))
    job["eval"]["seed"] = seed
    job["output"] = {"dir": str(out)}
    path = args.out / f"base_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    print(f"eval base seed={seed}", flush=True)
    _call([*CLI, "eval", spec["model"]["name_or_path"], "--job", str(path), "--out", str(out)],
          args.out / f"base_seed{seed}.log", args.threads)
    return out


# ---------------------------------------------------------------- aggregation


def read_metrics(results_json: Path, seed: int) -> dict[str, Any]:
    """Flat metrics of one evaluation: accuracy per temperature, pass@k at T=1, diversity, entropy."""
    res = json.loads(results_json.read_text(encoding="utf-8"))
    by_t = {float(v["temperature"]): v for v in res["sampling"]["policy"].values()}
    t1 = by_t[min(by_t, key=lambda t: abs(t - 1.0))]
    echosen = (res.get("headline", {}).get("entropy_chosen") or {}).get("policy")
    return {"seed": seed, "acc": {t: v["accuracy"] for t, v in by_t.items()},
            "pass_at_k": {t: v["pass_at_k"] for t, v in by_t.items()},
            "pass_at_k_t1": t1["pass_at_k"], "distinct_2": t1["diversity"]["distinct_2"],
            "unique_answers": t1["diversity"]["unique_answers"], "entropy_sampled": t1["entropy_sampled"],
            "entropy_chosen": echosen}


def mean_sd(values: list[float | None]) -> tuple[float, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def _fmt(ms: tuple[float, float], digits: int = 3) -> str:
    m, sd = ms
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _ks(n: int) -> list[int]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    return ks if ks[-1] == n else [*ks, n]


def aggregate(rows: dict[str, list[dict[str, Any]]], temps: list[float], n: int) -> dict[str, dict[str, Any]]:
    """``{row label: {metric: (mean, sd)}}`` over seeds."""
    out: dict[str, dict[str, Any]] = {}
    t1 = min(temps, key=lambda t: abs(t - 1.0))
    for label, ms in rows.items():
        agg: dict[str, Any] = {f"acc@{t:g}": mean_sd([m["acc"].get(t) for m in ms]) for t in temps}
        for t in temps:
            curves = [m["pass_at_k"][t] for m in ms if t in m["pass_at_k"]]
            agg[f"pass@T{t:g}"] = [mean_sd([c[k - 1] for c in curves]) for k in range(1, n + 1)]
        for key in ("distinct_2", "unique_answers", "entropy_sampled", "entropy_chosen"):
            agg[key] = mean_sd([m[key] for m in ms])
        agg["seeds"] = len(ms)
        base = {m["seed"]: m for m in rows.get("base (SFT)", [])}
        # paired by seed (same tasks and sampler seed): far less noisy than comparing two means
        agg["delta_acc@1"] = mean_sd([m["acc"][t1] - base[m["seed"]]["acc"][t1] for m in ms if m["seed"] in base])
        out[label] = agg
    return out


def write_table(agg: dict[str, dict[str, Any]], temps: list[float], n: int, path: Path) -> str:
    ks = _ks(n)
    head = (["model", "seeds"] + [f"acc T={t:g}" for t in temps] + ["Δ acc T=1 vs base (paired)"] + [f"pass@{k} T=1" for k in ks]
            + ["distinct-2 T=1", "unique answers T=1", "entropy sampled", "entropy chosen"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, a in agg.items():
        cells = [label, str(a["seeds"])] + [_fmt(a[f"acc@{t:g}"]) for t in temps] + [_fmt(a["delta_acc@1"])]
        cells += [_fmt(a["pass@T1"][k - 1]) for k in ks]
        cells += [_fmt(a["distinct_2"]), _fmt(a["unique_answers"]), _fmt(a["entropy_sampled"], 4),
                  _fmt(a["entropy_chosen"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    # the paper's baseline: DPO (alpha = 1) sampled at a lower temperature vs H-DPO at the training temperature
    lines += ["", "Coverage at the training temperature vs DPO (alpha = 1) sampled cooler:", "",
              "| model @ temperature | " + " | ".join(f"pass@{k}" for k in ks) + " |",
              "|---|" + "---|" * len(ks)]
    for label, a in agg.items():
        if label.startswith("alpha"):
            lines.append(f"| H-DPO {label} @ T=1 | " + " | ".join(_fmt(a["pass@T1"][k - 1]) for k in ks) + " |")
    for label in ("alpha 1", "base (SFT)"):
        for t in temps:
            if label in agg and t < 1.0:
                name = "DPO (alpha 1)" if label.startswith("alpha") else label
                lines.append(f"| {name} @ T={t:g} | " + " | ".join(_fmt(agg[label][f"pass@T{t:g}"][k - 1])
                                                              for k in ks) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def _save(fig: Any, path: Path) -> Path:
    """Write one figure as PNG and free it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(agg: dict[str, dict[str, Any]], alphas: list[float], temps: list[float], n: int, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    base = agg.get("base (SFT)")
    rows = [agg[f"alpha {a:g}"] for a in alphas]

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, t in enumerate(temps):
        m = [r[f"acc@{t:g}"][0] for r in rows]
        s = [r[f"acc@{t:g}"][1] for r in rows]
        line = ax.errorbar(alphas, m, yerr=s, marker="o", capsize=3, label=f"H-DPO T={t:g}")
        if base:
            ax.axhline(base[f"acc@{t:g}"][0], ls="--", color=line[0].get_color(), alpha=0.6,
                       label=f"base T={t:g}" if i == 0 else None)
    ax.set_xlabel("alpha")
    ax.set_ylabel("accuracy (mean ± sd over seeds)")
    ax.set_title("Accuracy vs alpha (dashed: base model)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "accuracy_vs_alpha.png"))

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = list(range(1, n + 1))
    for a, r in zip(alphas, rows, strict=True):
        ax.plot(ks, [v[0] for v in r["pass@T1"]], marker=".", label=f"alpha {a:g} @T=1")
    dpo = agg.get("alpha 1")
    for t in temps:
        if dpo and t < 1.0:
            ax.plot(ks, [v[0] for v in dpo[f"pass@T{t:g}"]], ls="--", label=f"DPO @T={t:g}")
    if base:
        ax.plot(ks, [v[0] for v in base["pass@T1"]], ls=":", color="k", label="base @T=1")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (mean over seeds)")
    ax.set_title("Coverage: pass@k")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "pass_at_k.png"))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, ax, title in (("entropy_sampled", axes[0], "entropy on own samples (nats/token)"),
                           ("distinct_2", axes[1], "distinct-2 at T=1")):
        ax.errorbar(alphas, [r[key][0] for r in rows], yerr=[r[key][1] for r in rows], marker="o", capsize=3,
                    label="H-DPO")
        if base:
            ax.axhline(base[key][0], ls="--", color="k", label="base")
        ax.set_xlabel("alpha")
        ax.set_title(title)
        ax.legend(fontsize=7)
    paths.append(_save(fig, out / "entropy_diversity.png"))
    return paths


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    alphas = [float(a) for a in args.alphas.split(",")]
    temps = sorted(float(t) for t in args.temperatures.split(","))
    seeds = list(range(args.seeds))
    tasks = task_file(args)
    spec = base_spec(args, tasks)
    if not args.report_only:
        work = [("base", None, s) for s in seeds] + [("run", a, s) for a in alphas for s in seeds]

        def do(item: tuple[str, float | None, int]) -> None:
            kind, alpha, seed = item
            if kind == "base":
                eval_base(spec, seed, args)
            else:
                train_and_eval(spec, alpha, seed, args)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(do, work))
    rows: dict[str, list[dict[str, Any]]] = {"base (SFT)": []}
    for s in seeds:
        if (args.out / f"base_seed{s}" / "results.json").exists():
            rows["base (SFT)"].append(read_metrics(args.out / f"base_seed{s}" / "results.json", s))
    for a in alphas:
        rows[f"alpha {a:g}"] = [read_metrics(args.out / f"alpha{a:g}_seed{s}" / "eval" / "results.json", s)
                                for s in seeds if (args.out / f"alpha{a:g}_seed{s}" / "eval" / "results.json").exists()]
    rows = {k: v for k, v in rows.items() if v}
    agg = aggregate(rows, temps, args.n_samples)
    (args.out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "job": spec, "aggregate": agg}, indent=1), encoding="utf-8")
    print(write_table(agg, temps, args.n_samples, args.out / "table.md"))
    present = [a for a in alphas if f"alpha {a:g}" in agg]
    for p in plot(agg, present, temps, args.n_samples, args.out):
        print("wrote", p)


if __name__ == "__main__":
    main()

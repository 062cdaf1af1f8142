"""pass@k for k = 1..64 at T = 1 over the alpha sweep: table, per-seed numbers and one plot.

Why: the sweep in docs/reproduction.md sampled n = 8 per task, so pass@k stopped at k = 8, while the paper's
coverage claims (alpha 1.1 better at large budgets, alpha 0.8 best coverage at T = 1) are about large k. This
script reads `hdpo-tune eval` outputs made with n = 64 at T = 1 on the same 64 tasks, one folder per model and
seed (`NAME_seedS/results.json`, NAME = `alphaA` or `base`), and aggregates mean ± sample sd over seeds.

    # per model and seed (eval_seedS.yaml: an eval: section with n_samples 64, temperatures [1.0], seed S)
    hdpo-tune eval RUN/final --job eval_seedS.yaml --out PASS64/alphaA_seedS
    python examples/reproduce/pass_at_k_64.py PASS64 --out docs/reproduction
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _fmt, mean_sd  # noqa: E402  (sibling script, not a package)

KS = (1, 2, 4, 8, 16, 32, 64)


def load(folder: Path) -> dict[str, dict[int, list[float]]]:
    """``{label: {seed: pass@k curve at T=1 (index k-1)}}`` from ``folder/NAME_seedS/results.json``."""
    rows: dict[str, dict[int, list[float]]] = {}
    for res in sorted(folder.glob("*_seed*/results.json")):
        m = re.fullmatch(r"(alpha([0-9.]+)|base)_seed(\d+)", res.parent.name)
        if not m:
            continue
        label = "base (SFT)" if m.group(1) == "base" else f"alpha {float(m.group(2)):g}"
        data = json.loads(res.read_text(encoding="utf-8"))
        by_t = {float(v["temperature"]): v for v in data["sampling"]["policy"].values()}
        rows.setdefault(label, {})[int(m.group(3))] = by_t[1.0]["pass_at_k"]
    order = ["base (SFT)"] + sorted((k for k in rows if k != "base (SFT)"), key=lambda s: float(s.split()[1]))
    return {k: dict(sorted(rows[k].items())) for k in order if k in rows}


def table(rows: dict[str, dict[int, list[float]]]) -> str:
    n = min(len(c) for r in rows.values() for c in r.values())
    ks = [k for k in KS if k <= n]
    lines = ["| model | seeds | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for label, by_seed in rows.items():
        cells = [_fmt(mean_sd([c[k - 1] for c in by_seed.values()])) for k in ks]
        lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_seed(rows: dict[str, dict[int, list[float]]], ks: tuple[int, ...] = (1, 8, 64)) -> str:
    """Per-seed pass@k and the difference to DPO (alpha 1) with the same train/eval seed."""
    dpo = rows.get("alpha 1", {})
    lines = []
    for k in ks:
        parts = []
        for label, by_seed in rows.items():
            vals = " / ".join(f"{c[k - 1]:.3f}" for c in by_seed.values())
            diff = ""
            if label != "alpha 1" and dpo:
                d = [c[k - 1] - dpo[s][k - 1] for s, c in by_seed.items() if s in dpo]
                diff = " (vs alpha 1: " + ", ".join(f"{x:+.3f}" for x in d) + ")"
            parts.append(f"{label}: {vals}{diff}")
        lines.append(f"* pass@{k}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict[int, list[float]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axd) = plt.subplots(1, 2, figsize=(10, 4))
    dpo = rows.get("alpha 1")
    dpo_mean = [mean_sd([c[i] for c in dpo.values()])[0] for i in range(len(next(iter(dpo.values()))))] if dpo else None
    for label, by_seed in rows.items():
        n = min(len(c) for c in by_seed.values())
        ks = list(range(1, n + 1))
        ms = [mean_sd([c[i] for c in by_seed.values()]) for i in range(n)]
        style: dict[str, Any] = {"ls": ":", "color": "k"} if label.startswith("base") else {}
        line = ax.plot(ks, [m for m, _ in ms], label=label, **style)[0]
        ax.fill_between(ks, [m - s for m, s in ms], [m + s for m, s in ms], color=line.get_color(), alpha=0.12)
        if dpo_mean is not None:
            axd.plot(ks, [m - d for (m, _), d in zip(ms, dpo_mean, strict=False)], label=label, color=line.get_color(),
                     ls=line.get_linestyle())
    for a in (ax, axd):
        a.set_xscale("log", base=2)
        a.set_xlabel("k")
        a.legend(fontsize=7)
    ax.set_ylabel("pass@k at T=1 (mean, band = ± sd over seeds)")
    ax.set_title("pass@k, n = 64 samples per task, 64 tasks")
    axd.axhline(0.0, color="grey", lw=0.8)
    axd.set_ylabel("pass@k minus DPO (alpha 1), means")
    axd.set_title("difference to DPO (alpha 1)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="folder with NAME_seedS/results.json evaluations")
    p.add_argument("--out", type=Path, default=Path("docs/reproduction"))
    args = p.parse_args(argv)
    rows = load(args.folder)
    text = table(rows) + "\n" + per_seed(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table_pass_at_k_64.md").write_text(text, encoding="utf-8")
    print(text)
    print(plot(rows, args.out / "pass_at_k_64.png"))


if __name__ == "__main__":
    main()

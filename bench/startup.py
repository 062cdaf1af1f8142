"""Whole-process timing of a short job: ``hdpo-tune run JOB`` (the real command) against TRL's DPOTrainer
(``bench/child.py``), both from a cold Python process on the same model folder, data and settings.

    python bench/startup.py [--reps 3] [--steps 6] [--threads 1]

For hdpo-tune it also reports the start-up: from the process start to the first finished optimizer step,
read from ``status.json`` (which the run rewrites after every step). Runs alternate hdpo, trl, hdpo, ...
Prints a markdown table of medians and writes ``bench/results/startup-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import CPU_LENGTHS, CPU_SHAPE, build_model_folder, make_pairs  # noqa: E402
from bench.run import base_cfg, make_plan, parse_args, run_child  # noqa: E402

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"


def _job(work: Path, model: Path, data: Path, cfg: dict, steps: int) -> Path:
    job = {"model": {"name_or_path": str(model), "dtype": cfg["dtype"]},
           "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
           "data": {"train": str(data), "max_length": 100000},
           "hdpo": {"alpha": 1.0, "beta": cfg["beta"]},
           "train": {"max_steps": steps, "batch_size": cfg["batch"], "micro_batch_size": cfg["micro"],
                     "learning_rate": cfg["lr"], "scheduler": "constant", "save_every": 10**6, "log_every": 10**6},
           "output": {"dir": str(work / "run")}}
    path = work / "job.yaml"
    path.write_text(json.dumps(job))  # JSON is YAML
    return path


def run_hdpo(job: Path, run: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(HDPO_TUNE), "run", str(job), "--force"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None:
            try:
                if json.loads((run / "status.json").read_text()).get("step"):
                    first = time.perf_counter() - t0
            except (OSError, ValueError):
                pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"hdpo-tune run failed:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}")
    return {"wall_s": wall, "first_step_s": first if first is not None else wall}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    plan = make_plan(parse_args(["--mode", "lora", "--steps", str(a.steps), "--warmup", "0",
                                 "--threads", str(a.threads)]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        build_model_folder(CPU_SHAPE, model)
        rows = make_pairs(a.steps * plan.batch, CPU_LENGTHS, CPU_SHAPE.vocab_size, seed=1)
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        text = work / "text.jsonl"
        text.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
        cfg = base_cfg(plan, model, data)
        job = _job(work, model, text, cfg, a.steps)
        hdpo, trl = [], []
        for rep in range(a.reps):
            hdpo.append(run_hdpo(job, work / "run", a.threads))
            trl.append({"wall_s": run_child({**cfg, "engine": "trl", "mode": "lora", "rep": rep}, work)["wall_s"]})
    med = {k: statistics.median(r[k] for r in hdpo) for k in ("wall_s", "first_step_s")}
    trl_wall = statistics.median(r["wall_s"] for r in trl)
    print(f"| engine | whole process s | start-up to first step s | whole process vs TRL |\n|---|---|---|---|\n"
          f"| hdpo-tune run | {med['wall_s']:.1f} | {med['first_step_s']:.1f} | {trl_wall / med['wall_s']:.2f}x |\n"
          f"| TRL DPOTrainer | {trl_wall:.1f} | - | 1.00x |")
    out = ROOT / "bench" / "results" / f"startup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": a.steps, "threads": a.threads, "hdpo": hdpo, "trl": trl}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

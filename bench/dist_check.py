"""FSDP2 and DeepSpeed ZeRO-3 on one GPU process: train, interrupt, resume, compare, merge and export.

    python bench/dist_check.py --out DIR [--backends fsdp2,zero3] [--steps 6] [--dry-run]

For each backend (ZeRO-3 only where ``deepspeed`` imports), through accelerate's own launcher and the ready
config in ``deploy/accelerate/``, on a small Llama built offline (LoRA, so merge has work to do):

1. an uninterrupted run of ``--steps`` steps;
2. the same job in another folder, sent SIGTERM once step 2's metrics are written (the trainer checkpoints at
   the next step boundary and exits), then rerun: it resumes from the checkpoint;
3. per-step losses of (2) against (1): identical up to float noise from the step after the checkpoint on;
4. ``hdpo-tune merge`` and ``hdpo-tune export`` of the resumed run (from the gathered, sharded-trained weights).

Writes ``DIR/dist_check.json`` and prints a markdown table. ``--dry-run`` builds the model and jobs, validates
them and prints the commands (no GPU needed): the device check's CPU rehearsal.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIGS = {"fsdp2": ROOT / "deploy" / "accelerate" / "fsdp2.yaml", "zero3": ROOT / "deploy" / "accelerate" / "zero3.yaml"}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def write_job(folder: Path, model: Path, pairs: Path, steps: int) -> Path:
    import yaml

    spec = {"model": {"name_or_path": str(model), "dtype": "float32"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"train": str(pairs), "max_length": 64},
            "hdpo": {"alpha": 0.9, "beta": 0.1},
            "train": {"max_steps": steps, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 1e-3,
                      "scheduler": "constant", "save_every": 1, "log_every": 1, "seed": 0, "mixed_precision": "bf16"},
            "output": {"dir": str(folder / "run")}}
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(spec))
    return job


def cli(work: Path) -> Path:
    """An ``hdpo-tune`` command over this tree's code (the package need not be installed on the device)."""
    shim = work / "hdpo-tune"
    shim.write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" -c "import sys; from service.cli import main; '
                    f'sys.exit(main())" "$@"\n')
    shim.chmod(0o755)
    return shim


def launch_cmd(backend: str, job: Path, shim: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS[backend]),
            "--num_processes", "1", "--main_process_port", _port(), "--no_python", str(shim), "run", str(job)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {int(r["step"]): float(r["loss"]) for r in rows if "loss" in r}


def run(cmd: list[str], log: Path, timeout: float, stop_at_step: int | None = None, run_dir: Path | None = None
        ) -> int:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                                start_new_session=True)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if stop_at_step is not None and run_dir is not None and (run_dir / "metrics.jsonl").exists() \
                    and max(losses(run_dir), default=0) >= stop_at_step:
                os.killpg(proc.pid, signal.SIGTERM)  # accelerate's launcher forwards it to the rank
                stop_at_step = None
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 124
        return proc.returncode


def check(backend: str, work: Path, model: Path, pairs: Path, steps: int, timeout: float) -> dict:
    log = work / f"{backend}.log"
    straight = write_job(work / f"{backend}-straight", model, pairs, steps)
    resumed = write_job(work / f"{backend}-resumed", model, pairs, steps)
    out: dict = {"backend": backend}
    shim = cli(work)
    out["straight_rc"] = run(launch_cmd(backend, straight, shim), log, timeout)
    out["interrupted_rc"] = run(launch_cmd(backend, resumed, shim), log, timeout, stop_at_step=2,
                                run_dir=resumed.parent / "run")
    out["resume_rc"] = run(launch_cmd(backend, resumed, shim), log, timeout)
    a, b = losses(straight.parent / "run"), losses(resumed.parent / "run")
    out["losses_straight"], out["losses_resumed"] = a, b
    common = sorted(set(a) & set(b))
    out["max_abs_loss_diff"] = max((abs(a[s] - b[s]) for s in common), default=None)
    out["steps_compared"] = common
    run_dir = resumed.parent / "run"
    for verb in ("merge", "export"):
        out[f"{verb}_rc"] = run([str(shim), verb, str(run_dir)], log, timeout)
    out["onnx_files"] = sorted(p.name for p in (run_dir / "onnx").glob("*")) if (run_dir / "onnx").exists() else []
    out["ok"] = (all(out[k] == 0 for k in ("straight_rc", "resume_rc", "merge_rc", "export_rc"))
                 and len(common) == steps and out["max_abs_loss_diff"] is not None
                 and out["max_abs_loss_diff"] < 1e-4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backends", default="fsdp2,zero3")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per launched command")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    from service.spec.job import load_spec
    from tests.fixtures.tiny import build_tiny_llama, write_pairs_jsonl

    work = a.out / "dist_work"
    work.mkdir(parents=True, exist_ok=True)
    model, pairs = work / "model", work / "pairs.jsonl"
    build_tiny_llama(model)
    write_pairs_jsonl(pairs, n=64)
    results = []
    for backend in a.backends.split(","):
        if backend == "zero3" and importlib.util.find_spec("deepspeed") is None:
            results.append({"backend": backend, "skipped": "deepspeed is not installed"})
            continue
        if a.dry_run:
            job = write_job(work / f"{backend}-dry", model, pairs, a.steps)
            load_spec(job)
            if backend == "zero3":
                import deepspeed  # noqa: F401  (imports on this machine)
            results.append({"backend": backend, "dry_run": " ".join(launch_cmd(backend, job, cli(work)))})
            continue
        results.append(check(backend, work, model, pairs, a.steps, a.timeout))
        (a.out / "dist_check.json").write_text(json.dumps(results, indent=1))  # after each backend
        print(f"{backend}: ok={results[-1]['ok']} max loss diff {results[-1]['max_abs_loss_diff']}", flush=True)
    (a.out / "dist_check.json").write_text(json.dumps(results, indent=1))
    print("| backend | straight | interrupted -> resumed | steps compared | max loss diff | merge | export | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "dry_run" in r or "skipped" in r:
            print(f"| {r['backend']} | {r.get('dry_run') or r.get('skipped')} |||||||")
            continue
        print(f"| {r['backend']} | rc {r['straight_rc']} | rc {r['interrupted_rc']} -> {r['resume_rc']} | "
              f"{len(r['steps_compared'])} | {r['max_abs_loss_diff']} | rc {r['merge_rc']} | rc {r['export_rc']} | "
              f"{r['ok']} |")
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

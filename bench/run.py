"""Side-by-side benchmark: hdpo-tune's engine vs TRL's DPOTrainer (alpha = 1, sigmoid loss).

    python bench/run.py [--quick] [--gpu] [--reps N] [--mode lora|full|both] [--sweep-lengths] [--dry-run]

Builds a random-weight model folder and variable-length pairs offline, then runs each engine in its own
process (``bench/child.py``), alternating hdpo, trl, hdpo, trl, ... for ``--reps`` repetitions, and prints a
markdown table of medians with ratios to TRL. Results go to ``bench/results/*.json``.
Both sides get the same model, data (every pair used once), batch, micro-batch, lr, beta, dtype, steps,
gradient checkpointing setting and torch thread count; TRL runs with ``padding_free=False`` (the only value
TRL 1.16 accepts) and ``max_length=None`` (no truncation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import (  # noqa: E402
    CPU_LENGTHS,
    CPU_SHAPE,
    GPU_LENGTHS,
    GPU_SHAPE,
    SHAPES,
    LengthSpec,
    ModelShape,
    build_model_folder,
    counted_tokens,
    forward_macs,
    make_pairs,
    pair_train_flops,
)

SPEC_BF16_PEAK = 989e12  # H100/H200 SXM dense bf16, vendor spec sheet


@dataclass
class Plan:
    gpu: bool
    modes: list[str]
    reps: int
    steps: int
    warmup: int
    batch: int
    micro: int
    threads: int
    grad_ckpt: bool
    precompute: bool
    lr: float = 1e-5
    beta: float = 0.1
    shape: ModelShape = field(default_factory=ModelShape)
    lengths: LengthSpec = field(default_factory=LengthSpec)
    engines: tuple[str, ...] = ("hdpo", "trl")
    hdpo_options: dict = field(default_factory=dict)
    chunk_size: int | None = None
    quant: dict | None = None  # --qlora: both engines load the base 4-bit nf4 with the same bitsandbytes config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 rep, few steps (a smoke run)")
    ap.add_argument("--gpu", action="store_true", help="Qwen2.5-0.5B shape, bf16, ~1100 tokens per pair")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="model shape (default: tiny on CPU, qwen-0.5b with --gpu; qwen-slice = Qwen2.5-0.5B's "
                    "layers at 1/6 depth and vocab)")
    ap.add_argument("--reps", type=int, default=None, help="alternating repetitions per engine (default 3)")
    ap.add_argument("--mode", choices=["lora", "full", "both"], default="both")
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps at the start of each run")
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--micro", type=int, default=None, help="pairs per micro-batch (default = --batch)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (CPU default 1)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing ON for both (TRL's default)")
    ap.add_argument("--precompute", action="store_true", help="reference log-probs precomputed, both sides")
    ap.add_argument("--engines", default="hdpo,trl", help="comma list (e.g. hdpo for ablations)")
    ap.add_argument("--hdpo-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainOptions override for the hdpo side (ablations), e.g. packing=false")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="hdpo output-layer chunk (tokens); a huge value = one [tokens, vocab] block (no chunking)")
    ap.add_argument("--sweep-lengths", action="store_true",
                    help="hdpo cost per token as mean pair length goes 256 -> 2048 at a fixed token budget")
    ap.add_argument("--max-batch", action="store_true",
                    help="largest batch (pairs, one micro-batch, one step) each engine fits: doubles from --batch "
                    "until out of memory or --max-batch-cap")
    ap.add_argument("--max-batch-cap", type=int, default=1024, help="largest batch --max-batch tries")
    ap.add_argument("--max-batch-seconds", type=float, default=None,
                    help="--max-batch: time budget over all engines (no new try starts after it)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="write a torch.profiler table of the first timed step of rep 0 (one file per engine/mode)")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="reuse (or create) the random-weight model folder here instead of a temporary one")
    ap.add_argument("--host-mem-mb", type=int, default=None,
                    help="--max-batch on a CPU: memory budget per process (RLIMIT_DATA), the CPU's 'GPU memory'")
    ap.add_argument("--budget", type=int, default=None, help="counted tokens per step for --sweep-lengths")
    ap.add_argument("--qlora", action="store_true", help="LoRA on a 4-bit nf4 base (bitsandbytes), both engines")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit (no model, no runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return ap.parse_args(argv)


def _value(text: str):
    low = text.lower()
    if low in {"true", "false"}:
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def make_plan(a: argparse.Namespace) -> Plan:
    reps = a.reps or (1 if a.quick else 3)
    steps = a.steps or (3 if a.quick else (10 if a.gpu else 6))
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    return Plan(gpu=a.gpu, modes=["lora", "full"] if a.mode == "both" else [a.mode], reps=reps, steps=steps,
                warmup=warmup, batch=a.batch, micro=a.micro or a.batch, threads=a.threads or (8 if a.gpu else 1),
                grad_ckpt=a.grad_ckpt, precompute=a.precompute,
                shape=SHAPES[a.shape] if a.shape else (GPU_SHAPE if a.gpu else CPU_SHAPE),
                lengths=GPU_LENGTHS if a.gpu else CPU_LENGTHS, engines=tuple(a.engines.split(",")),
                hdpo_options={k: _value(v) for k, v in (o.split("=", 1) for o in a.hdpo_opt)},
                chunk_size=a.chunk_size,
                quant={"bits": 4, "quant_type": "nf4", "double_quant": True,
                       "compute_dtype": "bfloat16" if a.gpu else "float32"} if a.qlora else None)


def versions() -> dict[str, str]:
    """Package versions from their metadata: nothing is imported (trl is needed only by its own child)."""
    import importlib.metadata as md

    import torch

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpu": _cpu_name(),
            "cpus": str(os.cpu_count())}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = "absent"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def matmul_peak(n: int = 8192, iters: int = 30) -> float:
    """bf16 dense matmul FLOP/s measured on this GPU now (the MFU ceiling this card really reaches)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 * iters / seconds


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_child(cfg: dict, work: Path) -> dict:
    cfg_path = work / f"cfg-{cfg['engine']}-{cfg['mode']}-{cfg['rep']}.json"
    cfg["out"] = str(work / f"res-{cfg['engine']}-{cfg['mode']}-{cfg['rep']}.json")
    cfg_path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "MKL_NUM_THREADS": str(cfg["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "child.py"), str(cfg_path)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cfg['engine']} {cfg['mode']} rep {cfg['rep']} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(Path(cfg["out"]).read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def flops_per_token(rows: list[dict], plan: Plan, engine: str, mode: str) -> float:
    """The engine's own training FLOPs per counted token (see :func:`bench.fixtures.pair_train_flops`)."""
    flops = sum(pair_train_flops(r, plan.shape, shared_prompt=engine == "hdpo", lora=mode == "lora",
                                 live_reference=not plan.precompute) for r in rows)
    return flops / sum(map(counted_tokens, rows))


def summarize(res: dict, params: int, gpu: bool, flops_token: float | None = None,
              measured_peak: float | None = None) -> dict:
    secs, toks = sum(res["step_s"]), sum(res["tokens"])
    out = {"tokens_per_s": toks / secs, "step_ms": 1000 * secs / len(res["step_s"]), "peak_mb": res["peak_mb"],
           "tokens_per_step": toks / len(res["tokens"])}
    if gpu and flops_token:
        out["tflops"] = flops_token * out["tokens_per_s"] / 1e12
        out["mfu"] = flops_token * out["tokens_per_s"] / SPEC_BF16_PEAK
        if measured_peak:
            out["mfu_measured"] = flops_token * out["tokens_per_s"] / measured_peak
    return out


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def table(summary: dict[str, dict[str, list[dict]]], gpu: bool) -> str:
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    head = f"| mode | engine | tokens/s | step ms | {mem} |" + \
        (" TFLOP/s | MFU (spec 989) | MFU (measured matmul) |" if gpu else "") + " tokens/s vs TRL | memory vs TRL |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode, by_engine in summary.items():
        trl = by_engine.get("trl")
        for engine, rows in by_engine.items():
            tps, ms, mb = _median(rows, "tokens_per_s"), _median(rows, "step_ms"), _median(rows, "peak_mb")
            ratio = f"{tps / _median(trl, 'tokens_per_s'):.2f}x" if trl else "-"
            mratio = f"{mb / _median(trl, 'peak_mb'):.2f}x" if trl else "-"
            mfu = (f" {_median(rows, 'tflops'):.0f} | {100 * _median(rows, 'mfu'):.1f}% | "
                   f"{100 * _median(rows, 'mfu_measured'):.1f}% |") if gpu and "mfu_measured" in rows[0] else ""
            lines.append(f"| {mode} | {engine} | {tps:,.0f} | {ms:,.0f} | {mb:,.0f} |{mfu} {ratio} | {mratio} |")
    return "\n".join(lines)


def base_cfg(plan: Plan, model_dir: Path, data: Path) -> dict:
    return {"model_dir": str(model_dir), "data": str(data), "dtype": plan.shape.dtype, "gpu": plan.gpu,
            "warmup": plan.warmup, "steps": plan.steps, "batch": plan.batch, "micro": plan.micro, "lr": plan.lr,
            "beta": plan.beta, "grad_ckpt": plan.grad_ckpt, "threads": plan.threads, "precompute": plan.precompute,
            "hdpo_options": plan.hdpo_options, "profile": None, "quant": plan.quant,
            "train_kwargs": {"chunk_size": plan.chunk_size} if plan.chunk_size else {}}


def write_data(path: Path, rows: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def compare(plan: Plan, work: Path, params: int, model_dir: Path, measured_peak: float | None = None,
            profile: Path | None = None) -> dict:
    n = (plan.warmup + plan.steps) * plan.batch
    rows = make_pairs(n, plan.lengths, plan.shape.vocab_size, seed=1)
    data = work / "pairs.jsonl"
    write_data(data, rows)
    summary: dict[str, dict[str, list[dict]]] = {}
    raw = []
    for mode in plan.modes:
        summary[mode] = {e: [] for e in plan.engines}
        for rep in range(plan.reps):
            for engine in plan.engines:  # alternating: hdpo, trl, hdpo, trl, ...
                cfg = {**base_cfg(plan, model_dir, data), "engine": engine, "mode": mode, "rep": rep}
                if profile is not None and rep == 0:
                    cfg["profile"] = str(profile.with_name(f"{profile.stem}-{engine}-{mode}{profile.suffix}"))
                res = run_child(cfg, work)
                s = summarize(res, params, plan.gpu, flops_token=flops_token(rows, plan, engine, mode),
                              measured_peak=measured_peak)
                summary[mode][engine].append(s)
                raw.append({"mode": mode, "engine": engine, "rep": rep, **s, "step_s": res["step_s"],
                            "tokens": res["tokens"]})
                print(f"  {mode:4s} {engine:4s} rep {rep}: {s['tokens_per_s']:,.0f} tok/s, {s['step_ms']:,.0f} ms/step,"
                      f" peak {s['peak_mb']:,.0f} MiB", file=sys.stderr, flush=True)
    return {"summary": summary, "runs": raw, "data": {"pairs": n, "mean_counted_tokens_per_pair":
                                                      sum(map(counted_tokens, rows)) / n},
            "flops_per_token": {f"{e}/{m}": flops_per_token(rows, plan, e, m) for m in plan.modes
                                for e in plan.engines}}


def flops_token(rows: list[dict], plan: Plan, engine: str, mode: str) -> float | None:
    return flops_per_token(rows, plan, engine, mode) if plan.gpu else None


def max_batch(plan: Plan, work: Path, params: int, model_dir: Path, cap: int, host_mem_mb: int | None = None,
              seconds: float | None = None) -> dict:
    """Per engine, the largest batch (pairs in one micro-batch, one optimizer step) that runs without running
    out of memory, doubling from ``plan.batch``; each try is its own process, so a failed try leaves nothing."""
    out: dict[str, dict] = {}
    budget = seconds / len(plan.engines) if seconds else None
    for engine in plan.engines:
        batch, best, tried, t0 = plan.batch, None, [], time.perf_counter()
        while batch <= cap and (budget is None or time.perf_counter() - t0 < budget):
            rows = make_pairs(batch, plan.lengths, plan.shape.vocab_size, seed=5)
            data = work / f"pairs-max-{batch}.jsonl"
            write_data(data, rows)
            sub = Plan(**{**asdict(plan), "shape": plan.shape, "lengths": plan.lengths, "batch": batch,
                          "micro": batch, "steps": 1, "warmup": 0})
            res = run_child({**base_cfg(sub, model_dir, data), "engine": engine, "mode": plan.modes[0],
                             "rep": f"max{batch}", "host_mem_cap_mb": host_mem_mb}, work)
            oom = bool(res.get("oom"))
            tried.append({"batch": batch, "oom": oom, "peak_mb": res.get("peak_mb"), "error": res.get("error")})
            state = "out of memory" if oom else f"ok, peak {res['peak_mb']:,.0f} MiB"
            print(f"  max-batch {engine} {batch}: {state}", file=sys.stderr, flush=True)
            if oom:
                break
            best, batch = batch, batch * 2
        out[engine] = {"largest_batch": best, "tried": tried, "reached_cap": batch > cap,
                       "out_of_time": not tried or not tried[-1]["oom"] and batch <= cap}
    return out


def max_batch_table(res: dict, gpu: bool) -> str:
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    lines = [f"| engine | largest batch (pairs) | {mem} at it | first failing batch | vs TRL |", "|---|---|---|---|---|"]
    trl = (res.get("trl") or {}).get("largest_batch")
    for engine, r in res.items():
        fits = [t for t in r["tried"] if not t["oom"]]
        failing = next((t["batch"] for t in r["tried"] if t["oom"]), None)
        ratio = f"{r['largest_batch'] / trl:.1f}x" if trl and r["largest_batch"] else "-"
        lines.append(f"| {engine} | {r['largest_batch'] or 'none'}{'+' if r['reached_cap'] else ''} | "
                     f"{fits[-1]['peak_mb']:,.0f} | {failing or 'none (cap)'} | {ratio} |" if fits else
                     f"| {engine} | none | - | {failing} | - |")
    return "\n".join(lines)


def sweep(plan: Plan, work: Path, params: int, model_dir: Path, budget: int) -> dict:
    """hdpo only: milliseconds per 1k counted tokens at a fixed token budget per step, mean pair 256 -> 2048.

    Repetitions alternate over the lengths (256, 512, 1024, 2048, 256, ...) so machine noise spreads evenly.
    Each point also gives the model's own attention share of the forward multiply-adds and the cost per
    multiply-add relative to 256: attention work per token grows with length in any exact implementation, so
    a flat cost per multiply-add is what the engine controls."""
    points = []
    for mean_pair in (256, 512, 1024, 2048):
        lengths = plan.lengths.scaled_to(mean_pair)
        probe = make_pairs(64, lengths, plan.shape.vocab_size, seed=2)
        per_pair = sum(map(counted_tokens, probe)) / len(probe)
        batch = max(1, round(budget / per_pair))
        sub = Plan(**{**asdict(plan), "shape": plan.shape, "lengths": lengths, "batch": batch, "micro": batch})
        rows = make_pairs((sub.warmup + sub.steps) * batch, lengths, plan.shape.vocab_size, seed=3)
        data = work / f"pairs-{mean_pair}.jsonl"
        write_data(data, rows)
        macs = [forward_macs(r, plan.shape) for r in rows]
        points.append({"mean_pair_tokens": mean_pair, "batch_pairs": batch, "sub": sub, "data": data, "runs": [],
                       "attention_share": sum(a for a, _ in macs) / sum(t for _, t in macs),
                       "macs_per_token": sum(t for _, t in macs) / sum(map(counted_tokens, rows))})
    for rep in range(plan.reps):
        for pt in points:
            cfg = {**base_cfg(pt["sub"], model_dir, pt["data"]), "engine": "hdpo", "mode": plan.modes[0], "rep": rep}
            pt["runs"].append(summarize(run_child(cfg, work), params, plan.gpu))
            tps = pt["runs"][-1]["tokens_per_s"]
            print(f"  sweep {pt['mean_pair_tokens']} rep {rep}: {1e6 / tps:.1f} ms per 1k tokens (batch "
                  f"{pt['batch_pairs']})", file=sys.stderr, flush=True)
    out = []
    for pt in points:
        tps = _median(pt["runs"], "tokens_per_s")
        out.append({"mean_pair_tokens": pt["mean_pair_tokens"], "batch_pairs": pt["batch_pairs"],
                    "tokens_per_step": _median(pt["runs"], "tokens_per_step"), "tokens_per_s": tps,
                    "ms_per_1k_tokens": 1e6 / tps, "peak_mb": _median(pt["runs"], "peak_mb"),
                    "attention_share": pt["attention_share"], "macs_per_token": pt["macs_per_token"],
                    "per_rep_tokens_per_s": [r["tokens_per_s"] for r in pt["runs"]]})
    base = out[0]
    for p in out:
        p["vs_256"] = p["ms_per_1k_tokens"] / base["ms_per_1k_tokens"]
        p["per_mac_vs_256"] = p["vs_256"] * base["macs_per_token"] / p["macs_per_token"]
    return {"points": out, "max_over_min": max(p["ms_per_1k_tokens"] for p in out) /
            min(p["ms_per_1k_tokens"] for p in out)}


def sweep_table(points: list[dict]) -> str:
    lines = ["| mean pair tokens | pairs/step | tokens/step | tokens/s | ms per 1k tokens | cost per token vs 256 | "
             "attention share of forward | cost per multiply-add vs 256 |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {p['mean_pair_tokens']} | {p['batch_pairs']} | {p['tokens_per_step']:,.0f} | "
                     f"{p['tokens_per_s']:,.0f} | {p['ms_per_1k_tokens']:.1f} | {p['vs_256']:.2f} | "
                     f"{100 * p['attention_share']:.0f}% | {p['per_mac_vs_256']:.2f} |")
    return "\n".join(lines)


def _model_folder(plan: Plan, folder: Path) -> int:
    """Build the random-weight model folder, or reuse one of the same shape (several benchmark calls in one
    GPU session build the ~1 GB folder once); returns the parameter count."""
    marker = folder / "bench_shape.json"
    if marker.exists() and json.loads(marker.read_text()) == asdict(plan.shape) and (folder / "params").exists():
        return int((folder / "params").read_text())
    params = build_model_folder(plan.shape, folder)
    (folder / "params").write_text(str(params))
    return params


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    plan = make_plan(a)
    budget = a.budget or (16384 if a.gpu else 4096)
    print(f"plan: {json.dumps(asdict(plan))}" + (f" sweep budget {budget} tokens/step" if a.sweep_lengths else ""))
    if a.dry_run:
        print(f"data: {(plan.warmup + plan.steps) * plan.batch} pairs, mean {plan.lengths.mean_pair_tokens:.0f} "
              f"tokens per pair (prompt+chosen+rejected); runs: "
              f"{len(plan.modes) * plan.reps * len(plan.engines)} child processes, alternating {plan.engines}")
        return
    if plan.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA (use --gpu --dry-run to print the plan on CPU)")
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hdpo-bench-") as tmp:
        work = Path(tmp)
        model_dir = a.model_dir or work / "model"
        params = _model_folder(plan, model_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        result = {"plan": asdict(plan), "params": params, "versions": versions(), "command": sys.argv}
        peak = None
        if plan.gpu and not a.max_batch:
            peak = result["measured_bf16_matmul_flops"] = matmul_peak()
            print(f"measured bf16 matmul peak: {peak / 1e12:.0f} TFLOP/s (spec sheet {SPEC_BF16_PEAK / 1e12:.0f})",
                  file=sys.stderr, flush=True)
        if a.max_batch:
            result["max_batch"] = max_batch(plan, work, params, model_dir, a.max_batch_cap, a.host_mem_mb,
                                            a.max_batch_seconds)
            text = max_batch_table(result["max_batch"], plan.gpu)
            name = "maxbatch"
        elif a.sweep_lengths:
            result["sweep"] = sweep(plan, work, params, model_dir, budget)
            text = sweep_table(result["sweep"]["points"]) + \
                f"\n\nmax/min cost per token: {result['sweep']['max_over_min']:.2f}"
            name = "sweep"
        else:
            result.update(compare(plan, work, params, model_dir, peak, a.profile))
            text = table(result["summary"], plan.gpu)
            name = "compare"
    dev = "gpu" if plan.gpu else "cpu"
    path = a.out / f"{name}-{dev}-{stamp}.json"
    result["table"] = text
    path.write_text(json.dumps(result, indent=1))
    print(text)
    print(f"\nparams {params:,}; results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()

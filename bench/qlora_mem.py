"""QLoRA vs LoRA memory, side by side: the base's weights and one training step's peak, same model and data.

    python bench/qlora_mem.py [--gpu] [--shape qwen-slice] [--steps 2] [--dry-run]

Each variant runs in its own process, one after the other, on the same random-weight model folder and pairs:
``lora`` (LoRA on the base in its own dtype) and ``qlora`` (the same LoRA on the base loaded 4-bit nf4 with
double quantization, bitsandbytes). Measured, per variant:

* weights: the bytes of every tensor the loaded model holds (parameters and buffers, packed 4-bit blocks and
  their quantization scales included), per parameter of the original model; on a GPU also
  ``torch.cuda.memory_allocated`` after loading (on a CPU the loader's memory-mapped files blur the RSS);
* step peak: the highest memory during ``--steps`` optimizer steps (CPU: the kernel's peak RSS, reset with
  ``/proc/self/clear_refs`` just before training, and that minus the RSS before loading; GPU:
  ``torch.cuda.max_memory_allocated`` after a reset);
* tokens/s of those steps (CPU 4-bit dequantizes each weight per matmul: slower, reported, not the point).

On a GPU it also estimates the largest model that fits: (card memory x 0.9 - the measured per-step
activation/adapter overhead) / the measured bytes per parameter. Results: ``bench/results/qlora-*.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fixtures import CPU_LENGTHS, GPU_LENGTHS, GPU_SHAPE, SHAPES, build_model_folder, make_pairs  # noqa: E402

VARIANTS = ("lora", "qlora")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _mem(gpu: bool) -> float:
    """MiB in use now: GPU allocated, or the CPU process's resident memory."""
    import torch

    return torch.cuda.memory_allocated() / 2**20 if gpu else _status_kb("VmRSS") / 1024


def tensor_mb(model) -> float:  # noqa: ANN001
    """Bytes of every distinct tensor storage of ``model``: parameters, buffers and bitsandbytes' quantization
    state (absmax scales, nested scales, code books) of each 4-bit weight."""
    import torch

    seen: dict[int, int] = {}

    def add(t: object) -> None:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for t in (*model.parameters(), *model.buffers()):
        add(t)
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            for v in (qs.absmax, qs.code, *((qs.state2.absmax, qs.state2.code) if qs.state2 else ())):
                add(v)
    return sum(seen.values()) / 2**20


def child(cfg: dict) -> dict:
    """One variant: load, measure the weights, train ``steps`` steps, measure the peak."""
    import gc

    import torch
    from accelerate import Accelerator

    from hdpo_core.alpha import ScheduledAlpha
    from hdpo_core.model import LoraOptions, ModelOptions, build_policy_and_reference, disable_dropout
    from hdpo_core.quant import QuantOptions
    from hdpo_core.tokenize import TokenizedPair
    from hdpo_core.trainer import TrainHooks, TrainOptions, TrainPaths, train

    gpu = cfg["gpu"]
    torch.set_num_threads(cfg["threads"])
    quant = QuantOptions(compute_dtype=cfg["dtype"], device="cuda" if gpu else "cpu") \
        if cfg["variant"] == "qlora" else None
    gc.collect()
    before = _mem(gpu)
    policy, _ = build_policy_and_reference(ModelOptions(cfg["model_dir"], dtype=cfg["dtype"], quantization=quant),
                                           LoraOptions(r=16, alpha=32, dropout=0.0))
    if gpu:
        policy.to("cuda")
    gc.collect()
    loaded_mb = _mem(gpu) - before
    weights_mb = tensor_mb(policy)
    disable_dropout(policy)
    rows = [json.loads(x) for x in Path(cfg["data"]).read_text().splitlines()]
    pairs = [TokenizedPair(tuple(r["prompt_ids"]), tuple(r["chosen_ids"]), tuple(r["rejected_ids"]), f"b:{i}")
             for i, r in enumerate(rows)]
    accelerator = Accelerator(cpu=not gpu, mixed_precision="bf16" if gpu else "no")
    opts = TrainOptions(total_steps=cfg["steps"], batch_size=cfg["batch"], micro_batch_size=cfg["batch"],
                        learning_rate=1e-4, scheduler="constant", save_every=10**9, seed=0)
    tokens: list[int] = []
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    else:  # hand the loader's freed heap back to the OS, then reset the peak RSS (VmHWM) to the current RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    start = _mem(gpu)
    split = {} if gpu else {"train_start_anon_mb": _status_kb("RssAnon") / 1024,
                            "train_start_file_mb": _status_kb("RssFile") / 1024}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(accelerator, policy, None, pairs, pad_token_id=0, alpha=ScheduledAlpha(1.0), opts=opts,
              paths=TrainPaths(None, Path(tmp) / "final"), ref_cache=None,
              save_final=lambda m, state_dict=None: None,
              hooks=TrainHooks(on_metrics=lambda m: tokens.append(int(m["tokens"])), on_message=lambda s: None))
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _status_kb("VmHWM") / 1024
    return {"variant": cfg["variant"], "weights_mb": weights_mb, "loaded_mb": loaded_mb, "bytes_per_param": weights_mb * 2**20 / cfg["params"],
            "step_peak_mb": peak, "baseline_mb": before, "train_start_mb": start, "step_added_mb": peak - start, "tokens_per_s": sum(tokens) / secs,
            "trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad), **split}


def table(rows: list[dict], gpu: bool) -> str:
    where = "GPU allocated" if gpu else "RSS"
    lines = [f"| base | weights MiB | bytes/param | a step adds MiB | step peak MiB ({where}) | step peak above "
             "the pre-load baseline MiB | tokens/s | weights vs LoRA | step peak above baseline vs LoRA |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = next(r for r in rows if r["variant"] == "lora")
    for r in rows:
        name = "4-bit nf4 + LoRA (QLoRA)" if r["variant"] == "qlora" else "full precision + LoRA"
        lines.append(f"| {name} | {r['weights_mb']:,.0f} | {r['bytes_per_param']:.2f} | {r['step_added_mb']:,.0f} | "
                     f"{r['step_peak_mb']:,.0f} | {r['step_peak_mb'] - r['baseline_mb']:,.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['weights_mb'] / ref['weights_mb']:.2f}x | "
                     f"{(r['step_peak_mb'] - r['baseline_mb']) / (ref['step_peak_mb'] - ref['baseline_mb']):.2f}x |")
    return "\n".join(lines)


def largest_model(rows: list[dict]) -> dict:
    """The largest model whose 4-bit base plus the measured per-step overhead fits in 90% of the card."""
    import torch

    q = next(r for r in rows if r["variant"] == "qlora")
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    overhead = q["step_peak_mb"] - q["weights_mb"]
    params = (0.9 * total - overhead) * 2**20 / q["bytes_per_param"]
    return {"card_mib": total, "step_overhead_mib": overhead, "bytes_per_param": q["bytes_per_param"],
            "largest_params_estimate": params}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="Qwen2.5-0.5B shape, bf16, on CUDA")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: qwen-slice (CPU)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and check the imports")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        cfg = json.loads(a.child.read_text())
        Path(cfg["out"]).write_text(json.dumps(child(cfg)))
        return
    shape = SHAPES[a.shape] if a.shape else (GPU_SHAPE if a.gpu else SHAPES["qwen-slice"])
    plan = {"gpu": a.gpu, "shape": shape.__dict__, "steps": a.steps, "batch": a.batch, "variants": VARIANTS}
    print(f"plan: {json.dumps(plan)}")
    if a.dry_run:
        import bitsandbytes  # noqa: F401

        import hdpo_core.quant  # noqa: F401
        return
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hdpo-qlora-") as tmp:
        work = Path(tmp)
        params = build_model_folder(shape, work / "model")
        data = work / "pairs.jsonl"
        pairs = make_pairs(a.steps * a.batch, GPU_LENGTHS if a.gpu else CPU_LENGTHS, shape.vocab_size, seed=1)
        data.write_text("\n".join(json.dumps(r) for r in pairs) + "\n")
        for variant in VARIANTS:
            cfg = {"variant": variant, "gpu": a.gpu, "model_dir": str(work / "model"), "dtype": shape.dtype,
                   "data": str(data), "steps": a.steps, "batch": a.batch, "threads": a.threads, "params": params,
                   "out": str(work / f"{variant}.json")}
            (work / f"{variant}.cfg").write_text(json.dumps(cfg))
            proc = subprocess.run([sys.executable, __file__, "--child", str(work / f"{variant}.cfg")],
                                  capture_output=True, text=True, env={"PYTHONWARNINGS": "ignore",
                                                                      **__import__("os").environ})
            if proc.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{proc.stderr[-4000:]}")
            rows.append(json.loads(Path(cfg["out"]).read_text()))
            print(f"  {variant}: {rows[-1]}", file=sys.stderr, flush=True)
    result = {"plan": plan, "params": params, "rows": rows, "table": table(rows, a.gpu)}
    if a.gpu:
        result["largest_model"] = largest_model(rows)
    path = a.out / f"qlora-{'gpu' if a.gpu else 'cpu'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(result["table"])
    if a.gpu:
        lm = result["largest_model"]
        print(f"measured {lm['bytes_per_param']:.2f} bytes/param (4-bit base) and {lm['step_overhead_mib']:,.0f} MiB "
              f"per-step overhead: the largest base that fits this card ({lm['card_mib']:,.0f} MiB) is about "
              f"{lm['largest_params_estimate'] / 1e9:.1f}B parameters")
    print(f"params {params:,}; results: {path}")


if __name__ == "__main__":
    main()

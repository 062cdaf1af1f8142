"""One benchmark run in its own process: ``python bench/child.py CONFIG.json``.

Runs either hdpo-tune's engine (``hdpo_core.trainer.train``) or TRL's ``DPOTrainer`` for ``warmup + steps``
optimizer steps and writes ``{"step_s": [...], "tokens": [...], "peak_mb": ...}`` for the timed steps to
``config["out"]``. Both sides are timed the same way: wall time between consecutive end-of-step callbacks
(batch building, forward, backward, optimizer, logging all included), and both count the same real tokens
per step (prompt+chosen plus prompt+rejected, no padding).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_mb(gpu: bool) -> float:
    import torch

    if gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Clock:
    """Per-step wall times and token counts from end-of-step callbacks. On a GPU each end time is taken after
    ``torch.cuda.synchronize()``: the step's kernels have finished, not merely been queued. ``profile``: a
    ``torch.profiler`` table of one step (the first timed one) is written there."""

    def __init__(self, gpu: bool = False, profile: str | None = None, warmup: int = 0) -> None:
        self.last = time.perf_counter()
        self.step_s: list[float] = []
        self.tokens: list[int] = []
        self.pending = 0
        self.gpu, self.profile_path, self.warmup = gpu, profile, warmup
        self.profiler = None

    def step_end(self) -> None:
        if self.gpu:
            import torch

            torch.cuda.synchronize()
        self._profile_hook(len(self.step_s) + 1)
        now = time.perf_counter()
        self.step_s.append(now - self.last)
        self.tokens.append(self.pending)
        self.pending = 0
        self.last = now

    def _profile_hook(self, done: int) -> None:
        """Start the profiler when the warm-up steps are done; stop and write the table one step later."""
        if not self.profile_path:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        if done == self.warmup and self.profiler is None:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.gpu else [])
            self.profiler = profile(activities=acts)
            self.profiler.start()
        elif done == self.warmup + 1 and self.profiler is not None:
            self.profiler.stop()
            key = "self_cuda_time_total" if self.gpu else "self_cpu_time_total"
            table = self.profiler.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
            Path(self.profile_path).write_text(f"one timed step ({'CUDA' if self.gpu else 'CPU'} kernels by self "
                                               f"time; torch {torch.__version__})\n{table}\n")
            self.profiler = None


def run_hdpo(cfg: dict, rows: list[dict]) -> _Clock:
    from accelerate import Accelerator

    from hdpo_core.alpha import ScheduledAlpha
    from hdpo_core.model import LoraOptions, ModelOptions, build_policy_and_reference, disable_dropout
    from hdpo_core.quant import QuantOptions
    from hdpo_core.tokenize import TokenizedPair
    from hdpo_core.trainer import TrainHooks, TrainOptions, TrainPaths

    quant = QuantOptions(**cfg["quant"], device="cuda" if cfg["gpu"] else "cpu") if cfg.get("quant") else None
    mopts = ModelOptions(cfg["model_dir"], dtype=cfg["dtype"], gradient_checkpointing=cfg["grad_ckpt"],
                         quantization=quant)
    lora = LoraOptions(r=16, alpha=32, dropout=0.0) if cfg["mode"] == "lora" else None
    policy, reference = build_policy_and_reference(mopts, lora)
    disable_dropout(policy)
    pairs = [TokenizedPair(tuple(r["prompt_ids"]), tuple(r["chosen_ids"]), tuple(r["rejected_ids"]), f"bench:{i}")
             for i, r in enumerate(rows)]
    accelerator = Accelerator(cpu=not cfg["gpu"], mixed_precision="bf16" if cfg["gpu"] else "no")
    clock = _Clock(cfg["gpu"], cfg.get("profile"), cfg["warmup"])

    def on_metrics(m: dict) -> None:
        clock.pending = int(m["tokens"])
        clock.step_end()

    options = dict(cfg.get("hdpo_options", {}))
    opts = TrainOptions(total_steps=cfg["warmup"] + cfg["steps"], batch_size=cfg["batch"],
                        micro_batch_size=cfg["micro"], learning_rate=cfg["lr"], scheduler="constant",
                        beta=cfg["beta"], save_every=10**9, seed=0, **options)
    ref_cache = None
    if cfg.get("precompute"):  # like TRL's precompute_ref_log_probs: scored once before training, not timed
        from hdpo_core.refcache import precompute_reference
        from hdpo_core.trainer import make_batcher

        [(ref_cache, _)] = precompute_reference(accelerator, reference, policy, [(pairs, None)],
                                                make_batcher(opts, 0, policy), batch_pairs=cfg["micro"])
        reference = None  # the frozen copy is back on the host and never used again
    from hdpo_core.trainer import train as trainer_train

    with tempfile.TemporaryDirectory() as tmp:  # no checkpoints (paths.checkpoints None), final not written
        clock.last = time.perf_counter()
        trainer_train(accelerator, policy, reference, pairs, pad_token_id=0, alpha=ScheduledAlpha(1.0), opts=opts,
                      paths=TrainPaths(None, Path(tmp) / "final"), ref_cache=ref_cache,
                      save_final=lambda m, state_dict=None: None,
                      hooks=TrainHooks(on_metrics=on_metrics, on_message=lambda s: None),
                      **cfg.get("train_kwargs", {}))
    return clock


def run_trl(cfg: dict, rows: list[dict]) -> _Clock:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    clock = _Clock(cfg["gpu"], cfg.get("profile"), cfg["warmup"])

    class Timed(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            clock.pending += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class StepEnd(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            clock.step_end()

    tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
    extra = {}
    if cfg.get("quant"):  # the same bitsandbytes config as hdpo's side; TRL prepares the k-bit model itself
        from hdpo_core.quant import QuantOptions, bnb_config

        extra = {"quantization_config": bnb_config(QuantOptions(**cfg["quant"])),
                 "device_map": {"": "cuda" if cfg["gpu"] else "cpu"}}
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=getattr(torch, cfg["dtype"]), **extra)
    peft_config = None
    if cfg["mode"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=cfg["micro"],
            gradient_accumulation_steps=cfg["batch"] // cfg["micro"], learning_rate=cfg["lr"],
            lr_scheduler_type="constant", max_steps=cfg["warmup"] + cfg["steps"], beta=cfg["beta"],
            loss_type=["sigmoid"], gradient_checkpointing=cfg["grad_ckpt"], bf16=cfg["gpu"], use_cpu=not cfg["gpu"],
            max_length=None, padding_free=False, precompute_ref_log_probs=bool(cfg.get("precompute")),
            report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=True, seed=0,
            dataloader_num_workers=0, max_grad_norm=1.0,
        )
        trainer = Timed(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                        callbacks=[StepEnd()])
        trainer.train()
    return clock


def is_oom(exc: BaseException) -> bool:
    """Out of memory, on the GPU (``torch.OutOfMemoryError``, or a RuntimeError saying so from a kernel) or on
    the host (``MemoryError``), possibly wrapped by the trainer's own error handling."""
    import torch

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in text or \
                "can't allocate memory" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check() -> None:
    """``child.py --check``: both engines' imports work here (the device check's dry run)."""
    import importlib.metadata as md

    from datasets import Dataset  # noqa: F401
    from trl import DPOConfig, DPOTrainer  # noqa: F401

    import hdpo_core.trainer  # noqa: F401

    print("child imports ok: trl " + md.version("trl") + ", datasets " + md.version("datasets"))


def main() -> None:
    if sys.argv[1] == "--check":
        check()
        return
    cfg = json.loads(Path(sys.argv[1]).read_text())
    if cfg.get("host_mem_cap_mb"):  # --max-batch on a CPU: a host-memory budget (heap and anonymous mappings)
        cap = int(cfg["host_mem_cap_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    import torch

    torch.set_num_threads(cfg["threads"])
    rows = [json.loads(line) for line in Path(cfg["data"]).read_text().splitlines()]
    try:
        clock = (run_hdpo if cfg["engine"] == "hdpo" else run_trl)(cfg, rows)
    except BaseException as exc:
        if not is_oom(exc):
            raise
        # --max-batch: running out of memory is the answer, not a failure
        Path(cfg["out"]).write_text(json.dumps({"engine": cfg["engine"], "mode": cfg["mode"], "oom": True,
                                                "error": f"{type(exc).__name__}: {str(exc)[:200]}"}))
        return
    w = cfg["warmup"]
    out = {"engine": cfg["engine"], "mode": cfg["mode"], "step_s": clock.step_s[w:], "tokens": clock.tokens[w:],
           "warmup_tokens": clock.tokens[:w], "peak_mb": _peak_mb(cfg["gpu"]), "pid": os.getpid()}
    Path(cfg["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()

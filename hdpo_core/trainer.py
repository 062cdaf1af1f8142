"""The H-DPO training loop on accelerate: one readable function, no LoRA/full mode flags.

Determinism and resume: the data order is a pure function of ``(seed, step)`` (a seeded permutation per
epoch, concatenated), so a resumed run sees exactly the batches an uninterrupted one would; weights,
optimizer, scheduler, RNG and the alpha controller come back from the checkpoint.
"""

from __future__ import annotations

import math
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .alpha import AlphaController
from .batching import TokenBatch, packed_batch, padded_batch
from .errors import Interrupted, RunError
from .forward import SequenceScorer, SequenceScores, score, uses_segment_kernel
from .refcache import RefLogps
from .steps import LossSettings, StepSums, run_micro_batches
from .tokenize import TokenizedPair


@dataclass(frozen=True)
class TrainOptions:
    total_steps: int
    batch_size: int = 8
    micro_batch_size: int = 4
    learning_rate: float = 1e-6
    scheduler: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    log_every: int = 1
    save_every: int = 50
    eval_every: int | None = None
    keep_checkpoints: int = 2
    packing: bool = True
    row_tokens: int = 4096
    share_prompt: bool = True
    on_nonfinite: str = "stop"
    beta: float = 0.1
    sft_weight: float = 0.0
    activation_offloading: bool = False


@dataclass(frozen=True)
class TrainPaths:
    checkpoints: Path
    final: Path


@dataclass
class TrainHooks:
    """Callbacks into the service layer (the core never writes the run folder's bookkeeping itself)."""

    on_metrics: Callable[[dict[str, Any]], None] = lambda m: None
    on_progress: Callable[[int, int], None] = lambda step, total: None
    on_message: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    final_dir: Path
    last_metrics: dict[str, Any] = field(default_factory=dict)


def batch_order(num_pairs: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Pair indices of global batch ``step``: a seeded permutation per epoch, epochs concatenated."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_pairs)
        perm = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        out.extend(perm[offset:offset + batch_size - len(out)])
    return out


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def make_batcher(opts: TrainOptions, pad_token_id: int, model: nn.Module | None = None
                 ) -> Callable[[Sequence[TokenizedPair]], TokenBatch]:
    """The micro-batch builder for ``model``: packed or padded. Packed batches go in ONE row when ``model``
    runs on the segment kernel (no row bound is needed there, and rows padded to the longest one compute
    padding); otherwise rows of ``opts.row_tokens`` bound the ``[rows, 1, T, T]`` fallback mask."""
    if opts.packing:
        row_tokens = sys.maxsize if model is not None and uses_segment_kernel(model) else opts.row_tokens
        return lambda pairs: packed_batch(pairs, pad_token_id, row_tokens=row_tokens, share_prompt=opts.share_prompt)
    return lambda pairs: padded_batch(pairs, pad_token_id)


def _optimizer_and_scheduler(model: nn.Module, opts: TrainOptions) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, betas=opts.adam_betas, eps=opts.adam_eps,
                                  weight_decay=opts.weight_decay, fused=fused or None)
    scheduler = get_scheduler("constant_with_warmup" if opts.scheduler == "constant" else opts.scheduler,
                              optimizer, num_warmup_steps=opts.warmup_steps, num_training_steps=opts.total_steps)
    return optimizer, scheduler


def train(
    accelerator: Any,
    policy: nn.Module,
    reference: nn.Module | None,
    pairs: Sequence[TokenizedPair],
    *,
    pad_token_id: int,
    alpha: AlphaController,
    opts: TrainOptions,
    paths: TrainPaths,
    ref_cache: RefLogps | None = None,
    eval_fn: Callable[[int], dict[str, float]] | None = None,
    save_final: Callable[[nn.Module], None],
    hooks: TrainHooks | None = None,
    chunk_size: int = 1024,
) -> TrainResult:
    """Train ``policy`` with H-DPO for ``opts.total_steps`` optimizer steps, resuming if a checkpoint exists.

    Args:
        accelerator: an ``accelerate.Accelerator`` (device placement, mixed precision, DDP/FSDP, reduce).
        policy: the causal LM to train (a peft model under LoRA).
        reference: frozen reference model for full fine-tuning; ``None`` under LoRA (adapter switched off).
        pairs: tokenised training pairs.
        alpha: gives alpha per step (constant, schedule or controller).
        ref_cache: precomputed reference log-probs per pair (skips the reference forward).
        eval_fn: called every ``opts.eval_every`` steps with the step; returns ``eval/*`` metrics.
        save_final: writes the final adapter/model folder from the unwrapped policy (main process only);
            under FSDP/DeepSpeed it is also given ``state_dict=`` (the gathered full weights).

    Distributed: every rank calls this with the same arguments; rank ``r`` trains on its contiguous slice of
    each global batch, and only the main process writes (checkpoints, final, metrics via ``hooks``).
    """
    hooks = hooks or TrainHooks()
    world = accelerator.num_processes
    per_rank = opts.batch_size // world
    if opts.batch_size % (opts.micro_batch_size * world):
        raise RunError(f"train.batch_size ({opts.batch_size}) must be divisible by train.micro_batch_size "
                       f"({opts.micro_batch_size}) x processes ({world})")
    torch.manual_seed(opts.seed)
    policy.train()
    kind = ckpt.backend(accelerator)
    if accelerator.is_main_process:
        ckpt.clean_partial(paths.checkpoints)
    accelerator.wait_for_everyone()
    last, skipped = ckpt.usable_checkpoint(paths.checkpoints)  # newest that verifies; damaged ones named
    if accelerator.is_main_process:
        for line in skipped:
            hooks.on_message(line)
    if last is not None:  # weights before prepare: DDP broadcasts them, FSDP2 shards them, ZeRO-3 masters them
        ckpt.load_weights(last, policy, zero3=kind == "deepspeed")
    if kind == "ddp" and accelerator.device.type == "cuda":
        # on the GPU before the optimizer exists, so AdamW takes its fused kernel (fused=True needs CUDA params
        # at construction); FSDP2/ZeRO-3 place (and shard) the weights themselves in prepare()
        policy.to(accelerator.device)
    scorer = SequenceScorer(policy, chunk_size=chunk_size)
    optimizer, scheduler = _optimizer_and_scheduler(policy, opts)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    ref_scorer = None
    if reference is not None and ref_cache is None:
        ref_scorer = SequenceScorer(reference.to(accelerator.device), chunk_size=chunk_size).eval()
    make_batch = make_batcher(opts, pad_token_id, policy)
    raw_scorer = accelerator.unwrap_model(scorer)

    def ref_scores(idx: Sequence[int], batch: TokenBatch) -> SequenceScores:
        if ref_cache is not None:
            return ref_cache.take(idx)
        with torch.no_grad(), accelerator.autocast():
            if ref_scorer is not None:
                return score(ref_scorer, batch)
            with raw_scorer.reference_mode():
                return score(raw_scorer, batch)

    start_step, resumed = 0, None
    if last is not None:
        state = ckpt.load_training_state(last, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                                         prepared=scorer, rank=accelerator.process_index)
        start_step = resumed = int(state["step"])
        alpha.load_state(state.get("alpha_state", {}))
        hooks.on_message(f"resuming from {last.name} (step {start_step})")
        if kind == "deepspeed":
            hooks.on_message("warning: DeepSpeed resume restores weights, scheduler and alpha; the Adam moments "
                             "restart (they are not gathered into checkpoints)")

    def backward(loss: torch.Tensor, is_last: bool) -> None:
        ctx = accelerator.no_sync(scorer) if not is_last and world > 1 else _nullcontext()
        with ctx:
            accelerator.backward(loss)

    def save(step: int) -> None:
        # gathering is collective (FSDP/DeepSpeed, per-rank RNG): every rank calls; only the main one writes
        from accelerate.utils import gather_object

        weights = ckpt.gather_trainable_state(accelerator, scorer, raw_scorer.model)
        opt_state = ckpt.gather_optimizer_state(accelerator, scorer, optimizer)
        rngs = gather_object([ckpt.rng_state()]) if world > 1 else [ckpt.rng_state()]
        if accelerator.is_main_process:
            try:
                ckpt.save_checkpoint(paths.checkpoints, step, weights=weights, optimizer_state=opt_state,
                                     scheduler=scheduler, state={"alpha_state": alpha.state()},
                                     keep=opts.keep_checkpoints, rng_states=rngs)
            except OSError as exc:
                ckpt.clean_partial(paths.checkpoints)
                last = ckpt.latest_checkpoint(paths.checkpoints)
                raise RunError(f"step {step}: cannot write the checkpoint under {paths.checkpoints} "
                               f"({exc.strerror or exc}); earlier checkpoint kept: {last.name if last else 'none'}. "
                               "Free disk space and rerun the job to resume") from None
        accelerator.wait_for_everyone()

    metrics: dict[str, Any] = {}
    progress = _progress(accelerator, start_step, opts.total_steps)
    with _StopFlag() as stop:
        for step in range(start_step, opts.total_steps):
            t0 = time.perf_counter()
            order = batch_order(len(pairs), opts.batch_size, step, opts.seed)
            mine = order[accelerator.process_index * per_rank:(accelerator.process_index + 1) * per_rank]
            micro = [mine[i:i + opts.micro_batch_size] for i in range(0, per_rank, opts.micro_batch_size)]
            a = alpha.value(step)
            with accelerator.autocast():
                sums = run_micro_batches(micro, pairs, make_batch, scorer, ref_scores,
                                         LossSettings(a, opts.beta, opts.sft_weight),
                                         loss_scale=world / opts.batch_size, backward=backward,
                                         device=accelerator.device, offload=opts.activation_offloading)
            grad_norm = _grad_norm(accelerator, scorer, opts.max_grad_norm)
            # one reduce carries the metric sums and "some rank got SIGTERM", so every rank stops at the same step
            flag = torch.tensor([1.0 if stop.signal is not None else 0.0], dtype=torch.float64)
            reduced = accelerator.reduce(torch.cat([sums.as_tensor(), flag]).to(accelerator.device), "sum").cpu()
            total, stop_now = StepSums.from_tensor(reduced[:-1]), bool(reduced[-1] > 0)
            means = total.means()
            finite = math.isfinite(means["loss"]) and math.isfinite(grad_norm)
            if finite:
                optimizer.step()
            else:
                _handle_nonfinite(step + 1, means["loss"], grad_norm, opts, hooks, paths)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            alpha.update(step, means["entropy"])
            elapsed = time.perf_counter() - t0
            target = alpha.state().get("entropy_target")
            metrics = {"step": step + 1, **means, "alpha": a, "learning_rate": scheduler.get_last_lr()[0],
                       **({"entropy_target": target} if target is not None else {}),
                       "grad_norm": grad_norm, "tokens": int(total.values["tokens"]),
                       "tokens_per_s": total.values["tokens"] / max(elapsed, 1e-9), "step_time_s": elapsed,
                       "peak_memory_mb": peak_memory_mb(), "epoch": (step + 1) * opts.batch_size / len(pairs),
                       "skipped": not finite}
            if eval_fn is not None and opts.eval_every and (step + 1) % opts.eval_every == 0:
                metrics.update(eval_fn(step + 1))
            if accelerator.is_main_process and ((step + 1) % opts.log_every == 0 or step + 1 == opts.total_steps):
                hooks.on_metrics(metrics)
            progress(metrics)
            if accelerator.is_main_process:
                hooks.on_progress(step + 1, opts.total_steps)
            if (step + 1) % opts.save_every == 0 and step + 1 < opts.total_steps:
                save(step + 1)
            if stop_now:
                save(step + 1)
                raise Interrupted(f"stopped by signal {stop.signal or 'on another rank'} after step {step + 1}; "
                                  "checkpoint written, "
                                  "rerun the same job to resume")
    full_state = ckpt.gather_full_state(accelerator, scorer)  # collective under FSDP/DeepSpeed
    if accelerator.is_main_process:
        if full_state is None:
            save_final(raw_scorer.model)
        else:
            save_final(raw_scorer.model, state_dict=full_state)
    save(opts.total_steps)
    return TrainResult(steps=opts.total_steps, resumed_from=resumed, final_dir=paths.final, last_metrics=metrics)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _grad_norm(accelerator: Any, scorer: nn.Module, max_norm: float | None) -> float:
    params = [p for p in scorer.parameters() if p.requires_grad]
    if max_norm:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _handle_nonfinite(step: int, loss: float, grad_norm: float, opts: TrainOptions, hooks: TrainHooks,
                      paths: TrainPaths) -> None:
    what = f"loss={loss}" if not math.isfinite(loss) else f"grad_norm={grad_norm}"
    last = ckpt.latest_checkpoint(paths.checkpoints)
    kept = f"; last good checkpoint: {last}" if last else ""
    if opts.on_nonfinite == "stop":
        raise RunError(f"step {step}: non-finite {what}{kept}. Lower train.learning_rate, check the data, or set "
                       "train.on_nonfinite: skip")
    hooks.on_message(f"warning: step {step}: non-finite {what}; update skipped (train.on_nonfinite: skip)")


def _progress(accelerator: Any, start: int, total: int) -> Callable[[dict[str, Any]], None]:
    """A tqdm bar (loss, accuracy, tokens/s, ETA) on a terminal; in a log (stderr not a TTY: CI, Kubernetes,
    ``docker logs``) one plain line every 30 s and at the end instead of carriage-return redraws."""
    if not accelerator.is_main_process:
        return lambda m: None
    if not sys.stderr.isatty():
        return _LogLines(start, total)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, leave=True)

    def update(m: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}", acc=f"{m['rewards/accuracies']:.2f}",
                        tok_s=f"{m['tokens_per_s']:.0f}", refresh=False)
        if m["step"] >= total:
            bar.close()

    return update


class _LogLines:
    """Progress for logs: ``train step 40/120 (33%) loss 0.6512 acc 0.62 tok/s 4,410 elapsed 1m20s eta 2m40s``."""

    def __init__(self, start: int, total: int, every_s: float = 30.0) -> None:
        self.start, self.total, self.every_s = start, total, every_s
        self.t0 = self.last = time.monotonic()

    def __call__(self, m: dict[str, Any]) -> None:
        now = time.monotonic()
        step = int(m["step"])
        if now - self.last < self.every_s and step < self.total and step != self.start + 1:
            return
        self.last = now
        elapsed = now - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else float("nan")
        print(f"train step {step}/{self.total} ({100 * step / self.total:.0f}%) loss {m['loss']:.4f} "
              f"acc {m['rewards/accuracies']:.2f} tok/s {m['tokens_per_s']:,.0f} elapsed {_hms(elapsed)} "
              f"eta {_hms(eta)}", file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

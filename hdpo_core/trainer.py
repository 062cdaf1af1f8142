"""The H-DPO training loop on accelerate: prepare -> fit -> finish, no LoRA/full mode flags.

Its inputs and result types live in :mod:`hdpo_core.train_types` (re-exported here).

Determinism and resume: the data order is a pure function of ``(seed, step)`` (a seeded permutation per
epoch, concatenated), so a resumed run sees exactly the batches an uninterrupted one would; weights,
optimizer, scheduler, RNG and the alpha controller come back from the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .alpha import AlphaController, alpha_controller
from .batching import TokenBatch, packed_batch, padded_batch, to_device
from .choices import check_batch_split
from .errors import Interrupted, RunError
from .forward import SequenceScorer, SequenceScores, uses_segment_kernel
from .progress import StopFlag, progress_printer
from .refcache import RefLogps, live_reference
from .steps import METRIC_SUMS, evaluate_pairs, metric_means, run_micro_batches
from .tokenize import TokenizedPair
from .train_types import EvalSet, TrainHooks, TrainOptions, TrainPaths, TrainResult

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["EvalSet", "TrainHooks", "TrainOptions", "TrainPaths", "TrainResult", "batch_order", "configure_deepspeed",
           "evaluate", "finish", "fit", "make_batcher", "prepare", "train"]


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


def make_batcher(opts: TrainOptions, pad_token_id: int, model: nn.Module | None = None
                 ) -> Callable[[Sequence[TokenizedPair]], TokenBatch]:
    """The micro-batch builder for ``model``: packed or padded. Packed batches go in ONE row when ``model``
    runs on the segment kernel (no row bound is needed there, and rows padded to the longest one compute
    padding); otherwise rows of ``opts.row_tokens`` bound the ``[rows, 1, T, T]`` fallback mask."""
    if opts.packing:
        row_tokens = sys.maxsize if model is not None and uses_segment_kernel(model) else opts.row_tokens
        return lambda pairs: packed_batch(pairs, pad_token_id, row_tokens=row_tokens, share_prompt=opts.share_prompt)
    return lambda pairs: padded_batch(pairs, pad_token_id)


def _optimizer_and_scheduler(model: nn.Module, opts: TrainOptions) -> tuple[torch.optim.Optimizer, LRScheduler]:
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in params)
    optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, betas=opts.adam_betas, eps=opts.adam_eps,
                                  weight_decay=opts.weight_decay, fused=fused or None)
    scheduler = get_scheduler("constant_with_warmup" if opts.scheduler == "constant" else opts.scheduler,
                              optimizer, num_warmup_steps=opts.warmup_steps, num_training_steps=opts.total_steps)
    return optimizer, scheduler


@dataclass
class _Session:
    """What :func:`prepare` builds and :func:`fit` runs: the prepared modules, the reference, the start step."""

    accelerator: Accelerator
    opts: TrainOptions
    paths: TrainPaths
    hooks: TrainHooks
    alpha: AlphaController
    pairs: Sequence[TokenizedPair]
    scorer: nn.Module  # prepared: DDP/FSDP2/DeepSpeed-wrapped SequenceScorer
    raw_scorer: SequenceScorer
    optimizer: torch.optim.Optimizer  # prepared: accelerate's AcceleratedOptimizer
    scheduler: LRScheduler
    make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch]
    ref_scores: Callable[[Sequence[int], TokenBatch], SequenceScores]
    evaluation: EvalSet | None
    eval_ref_scores: Callable[[Sequence[int], TokenBatch], SequenceScores] | None
    kind: str
    start_step: int = 0
    resumed: int | None = None


def train(
    accelerator: Accelerator,
    policy: nn.Module,
    reference: nn.Module | None,
    pairs: Sequence[TokenizedPair],
    *,
    pad_token_id: int,
    opts: TrainOptions,
    paths: TrainPaths,
    save_final: Callable[..., None],
    alpha: AlphaController | None = None,
    ref_cache: RefLogps | None = None,
    evaluation: EvalSet | None = None,
    hooks: TrainHooks | None = None,
    chunk_size: int = 1024,
) -> TrainResult:
    """Train ``policy`` with H-DPO for ``opts.total_steps`` optimizer steps, resuming if a checkpoint exists.

    Args:
        accelerator: an ``accelerate.Accelerator`` (device placement, mixed precision, DDP/FSDP, reduce).
        policy: the causal LM to train (a peft model under LoRA).
        reference: frozen reference model for full fine-tuning; ``None`` under LoRA (adapter switched off).
        pairs: tokenised training pairs.
        opts: the loop's settings; ``opts.loss`` (:class:`~hdpo_core.settings.LossSettings`) goes to the loss
            as configured, with each step's alpha filled in.
        alpha: gives alpha per step; ``None`` (the service) builds the one ``opts.loss`` describes
            (:func:`~hdpo_core.alpha.alpha_controller`). Tests and benchmarks hand in their own.
        save_final: writes the final adapter/model folder from the unwrapped policy (main process only);
            under FSDP/DeepSpeed it is also given ``state_dict=`` (the gathered full weights).
        ref_cache: precomputed reference log-probs per pair (skips the reference forward).
        evaluation: held-out pairs scored every ``opts.eval_every`` steps through the prepared scorer.

    Distributed: every rank calls this with the same arguments; rank ``r`` trains on its contiguous slice of
    each global batch, and only the main process writes (checkpoints, final, metrics via ``hooks``).
    The work is litgpt's shape: :func:`prepare` (placement, resume) -> :func:`fit` (the loop) -> :func:`finish`.
    """
    session = prepare(accelerator, policy, reference, pairs, pad_token_id=pad_token_id, alpha=alpha, opts=opts,
                      paths=paths, ref_cache=ref_cache, evaluation=evaluation, hooks=hooks or TrainHooks(),
                      chunk_size=chunk_size)
    metrics = fit(session)
    finish(session, save_final)
    return TrainResult(steps=opts.total_steps, resumed_from=session.resumed, final_dir=paths.final,
                       last_metrics=metrics)


def prepare(accelerator: Accelerator, policy: nn.Module, reference: nn.Module | None, pairs: Sequence[TokenizedPair], *,
            pad_token_id: int, alpha: AlphaController | None, opts: TrainOptions, paths: TrainPaths,
            ref_cache: RefLogps | None, evaluation: EvalSet | None, hooks: TrainHooks,
            chunk_size: int) -> _Session:
    """Place (or shard) the policy, build optimizer, scheduler and the reference, and restore a checkpoint."""
    world = accelerator.num_processes
    check_batch_split(opts.batch_size, opts.micro_batch_size, processes=world)
    if alpha is None:
        alpha = alpha_controller(opts.loss, opts.total_steps)
    torch.manual_seed(opts.seed)
    policy.train()
    kind = ckpt.backend(accelerator)
    last = _latest_checkpoint(accelerator, paths, hooks)
    if last is not None:  # weights before prepare: DDP broadcasts them, FSDP2 shards them, ZeRO-3 masters them
        ckpt.load_weights(last, policy, zero3=kind == "deepspeed")
    if kind == "ddp" and accelerator.device.type == "cuda":
        # on the GPU before the optimizer exists, so AdamW takes its fused kernel (fused=True needs CUDA params
        # at construction); FSDP2/ZeRO-3 place (and shard) the weights themselves in prepare()
        policy.to(accelerator.device)
    if kind == "deepspeed":
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, opts, world)
    optimizer, scheduler = _optimizer_and_scheduler(policy, opts)
    scorer, optimizer = accelerator.prepare(SequenceScorer(policy, chunk_size=chunk_size), optimizer)
    raw_scorer = accelerator.unwrap_model(scorer)
    live = None
    if ref_cache is None or (evaluation is not None and evaluation.ref_cache is None):
        live = live_reference(reference, raw_scorer, device=accelerator.device, chunk_size=chunk_size,
                              autocast=accelerator.autocast)
    session = _Session(accelerator, opts, paths, hooks, alpha, pairs, scorer, raw_scorer, optimizer, scheduler,
                       make_batcher(opts, pad_token_id, policy), _reference_source(ref_cache, live, accelerator),
                       evaluation, None, kind)
    if evaluation is not None:
        session.eval_ref_scores = _reference_source(evaluation.ref_cache, live, accelerator)
    if last is not None:
        state = ckpt.load_training_state(last, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator,
                                         prepared=scorer, rank=accelerator.process_index)
        session.start_step = session.resumed = int(state["step"])
        alpha.load_state(state.get("alpha_state", {}))
        hooks.on_message(f"resuming from {last.name} (step {session.start_step})")
        if kind == "deepspeed":
            hooks.on_message("warning: DeepSpeed resume restores weights, scheduler and alpha; the Adam moments "
                             "restart (they are not gathered into checkpoints)")
    return session


def _latest_checkpoint(accelerator: Accelerator, paths: TrainPaths, hooks: TrainHooks) -> Path | None:
    """The newest checkpoint whose checksums verify; each damaged newer one is named in one warning line."""
    if paths.checkpoints is None:
        return None
    if accelerator.is_main_process:
        ckpt.clean_partial(paths.checkpoints)
    accelerator.wait_for_everyone()
    last, skipped = ckpt.usable_checkpoint(paths.checkpoints)
    if accelerator.is_main_process:
        for line in skipped:
            hooks.on_message(line)
    return last


def _reference_source(cache: RefLogps | None, live: Callable[[TokenBatch], SequenceScores] | None,
                      accelerator: Accelerator) -> Callable[[Sequence[int], TokenBatch], SequenceScores]:
    """``(pair indices, batch) -> reference scores``: the precomputed rows when there is a cache, else live."""
    if cache is not None:
        on_device = cache.to(accelerator.device)  # a few floats per pair: read without host round trips
        return lambda idx, batch: on_device.take(idx)
    if live is None:
        raise RuntimeError("no reference: neither precomputed log-probs nor a live reference")
    return lambda idx, batch: live(batch)


def configure_deepspeed(config: dict[str, Any], opts: TrainOptions, world: int) -> None:
    """Fill the DeepSpeed config so the ENGINE does what this trainer says (in place).

    ``accelerator.prepare(scorer, optimizer)`` has no dataloader, so accelerate cannot resolve
    ``train_micro_batch_size_per_gpu: auto`` and raises. Gradient accumulation is this trainer's: the loss is
    already divided by the global batch and :func:`fit` marks the last micro-batch as the boundary, so DeepSpeed
    must neither divide by its own accumulation count (``gradient_accumulation_steps: 1``) nor step earlier.
    Clipping is the engine's (``gradient_clipping`` = ``train.max_grad_norm``; 0 = off).
    """
    config["train_micro_batch_size_per_gpu"] = opts.micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = opts.micro_batch_size * world
    config["gradient_clipping"] = float(opts.max_grad_norm or 0.0)


def fit(s: _Session) -> dict[str, Any]:
    """The loop: one optimizer step per iteration, a checkpoint every ``save_every`` steps, clean stop on
    SIGTERM/SIGINT (checkpoint, then :class:`Interrupted`). Returns the last step's metrics."""
    metrics: dict[str, Any] = {}
    progress = progress_printer(s.accelerator, s.start_step, s.opts.total_steps)
    with StopFlag() as stop:
        for step in range(s.start_step, s.opts.total_steps):
            metrics, stop_now = _train_step(s, step, stop.signal is not None)
            if s.evaluation is not None and s.opts.eval_every and (step + 1) % s.opts.eval_every == 0:
                metrics.update(evaluate(s, step + 1))
            if s.accelerator.is_main_process and ((step + 1) % s.opts.log_every == 0
                                                  or step + 1 == s.opts.total_steps):
                s.hooks.on_metrics(metrics)
            progress(metrics)
            if s.accelerator.is_main_process:
                s.hooks.on_progress(step + 1, s.opts.total_steps)
            if (step + 1) % s.opts.save_every == 0 and step + 1 < s.opts.total_steps:
                _save(s, step + 1)
            if stop_now:
                _save(s, step + 1)
                raise Interrupted(f"stopped by signal {stop.signal or 'on another rank'} after step {step + 1}; "
                                  "checkpoint written, rerun the same job to resume")
    return metrics


def _train_step(s: _Session, step: int, signalled: bool) -> tuple[dict[str, Any], bool]:
    """Forward/backward over this rank's micro-batches, then ONE host read of every number the step needs
    (metric sums, grad norm, "some rank got a signal"), then the optimizer. That read is the step's only host
    sync: the non-finite guard and an entropy-targeting alpha need this step's values before the next step."""
    acc, opts = s.accelerator, s.opts
    world, t0 = acc.num_processes, time.perf_counter()
    per_rank = opts.batch_size // world
    order = batch_order(len(s.pairs), opts.batch_size, step, opts.seed)
    mine = order[acc.process_index * per_rank:(acc.process_index + 1) * per_rank]
    micro = [mine[i:i + opts.micro_batch_size] for i in range(0, per_rank, opts.micro_batch_size)]
    a = s.alpha.value(step)
    with acc.autocast():
        sums = run_micro_batches(micro, s.pairs, s.make_batch, s.scorer, s.ref_scores,
                                 opts.loss.with_alpha(a), loss_scale=world / opts.batch_size,
                                 backward=lambda loss, last: _backward(s, loss, last), device=acc.device,
                                 offload=opts.activation_offloading)
    grad_norm = _grad_norm(acc, s.scorer, opts.max_grad_norm)
    # one reduce carries the metric sums and "some rank got SIGTERM", so every rank stops at the same step
    flag = to_device(torch.tensor([1.0 if signalled else 0.0], dtype=torch.float64), acc.device)
    reduced = acc.reduce(torch.cat([sums.packed(acc.device), flag]), "sum")
    host = torch.cat([reduced, grad_norm.to(acc.device, torch.float64).reshape(1)]).tolist()  # the one sync
    values = dict(zip(METRIC_SUMS, host[:len(METRIC_SUMS)], strict=True))
    stop_now, norm = host[-2] > 0, host[-1]
    means = metric_means(values)
    skipped = _optimizer_step(s, step, means["loss"], norm)
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.alpha.update(step, means["entropy"])
    elapsed = time.perf_counter() - t0
    target = s.alpha.state().get("entropy_target")
    metrics = {"step": step + 1, **means, "alpha": a, "learning_rate": s.scheduler.get_last_lr()[0],
               **({"entropy_target": target} if target is not None else {}),
               "grad_norm": norm, "tokens": int(values["tokens"]),
               "tokens_per_s": values["tokens"] / max(elapsed, 1e-9), "step_time_s": elapsed,
               "peak_memory_mb": peak_memory_mb(), "epoch": (step + 1) * opts.batch_size / len(s.pairs),
               "skipped": skipped}
    return metrics, stop_now


def _backward(s: _Session, loss: torch.Tensor, is_last: bool) -> None:
    """Gradient sync only on the step's last micro-batch: ``no_sync`` under DDP; under DeepSpeed the engine
    takes ``sync_gradients`` as its accumulation boundary (and would otherwise step after every micro-batch)."""
    acc = s.accelerator
    if s.kind == "deepspeed":
        acc.gradient_state._set_sync_gradients(is_last)
        acc.backward(loss)
        return
    with acc.no_sync(s.scorer) if not is_last and acc.num_processes > 1 else contextlib.nullcontext():
        acc.backward(loss)


def _optimizer_step(s: _Session, step: int, loss: float, grad_norm: float) -> bool:
    """Step unless the loss or gradient is not finite; returns whether the update was skipped.

    fp16 (a GradScaler): an inf gradient is the scaler's overflow signal, not a failure: the accelerated
    optimizer's ``step`` skips the update AND lowers the scale (skipping ``step`` here would keep the scale
    and hit the same overflow forever). DeepSpeed: the engine already stepped inside ``backward``.
    """
    finite_loss, finite_grad = math.isfinite(loss), math.isfinite(grad_norm)
    if finite_loss and finite_grad:
        s.optimizer.step()
        return False
    if finite_loss and getattr(s.accelerator, "scaler", None) is not None:
        s.optimizer.step()
        s.hooks.on_message(f"warning: step {step + 1}: fp16 gradient overflow; update skipped, loss scale lowered")
        return True
    _handle_nonfinite(step + 1, loss, grad_norm, s.opts, s.hooks, s.paths)
    return True


def evaluate(s: _Session, step: int) -> dict[str, float]:
    """``eval/*`` means over the held-out pairs, through the prepared scorer and the session's reference."""
    assert s.evaluation is not None and s.eval_ref_scores is not None
    means = evaluate_pairs(s.scorer, s.eval_ref_scores, s.evaluation.pairs, s.make_batch,
                           s.opts.loss.with_alpha(s.alpha.value(step - 1)),
                           micro_batch_size=s.opts.micro_batch_size, device=s.accelerator.device,
                           autocast=s.accelerator.autocast)
    return {f"eval/{k}": v for k, v in means.items()}


def _save(s: _Session, step: int) -> None:
    """Checkpoint ``step``. Gathering is collective (FSDP/DeepSpeed, per-rank RNG): every rank calls; only the
    main one writes."""
    from accelerate.utils import gather_object

    if s.paths.checkpoints is None:
        return
    acc = s.accelerator
    weights = ckpt.gather_trainable_state(acc, s.scorer, s.raw_scorer.model)
    opt_state = ckpt.gather_optimizer_state(acc, s.scorer, s.optimizer)
    rngs = gather_object([ckpt.rng_state()]) if acc.num_processes > 1 else [ckpt.rng_state()]
    if acc.is_main_process:
        try:
            ckpt.save_checkpoint(s.paths.checkpoints, step, weights=weights, optimizer_state=opt_state,
                                 scheduler=s.scheduler, state={"alpha_state": s.alpha.state()},
                                 keep=s.opts.keep_checkpoints, rng_states=rngs)
        except OSError as exc:
            ckpt.clean_partial(s.paths.checkpoints)
            last = ckpt.latest_checkpoint(s.paths.checkpoints)
            raise RunError(f"step {step}: cannot write the checkpoint under {s.paths.checkpoints} "
                           f"({exc.strerror or exc}); earlier checkpoint kept: {last.name if last else 'none'}. "
                           "Free disk space and rerun the job to resume") from None
    acc.wait_for_everyone()


def finish(s: _Session, save_final: Callable[..., None]) -> None:
    """Write the final model (gathered under FSDP/DeepSpeed: a collective) and the last checkpoint."""
    full_state = ckpt.gather_full_state(s.accelerator, s.scorer)
    if s.accelerator.is_main_process:
        if full_state is None:
            save_final(s.raw_scorer.model)
        else:
            save_final(s.raw_scorer.model, state_dict=full_state)
    _save(s, s.opts.total_steps)


def _grad_norm(accelerator: Accelerator, scorer: nn.Module, max_norm: float | None) -> torch.Tensor:
    """The total gradient norm before clipping, as a device tensor (read with the step's other numbers).
    Clips to ``max_norm`` when set; under DeepSpeed the engine clipped and reports the norm itself."""
    params = [p for p in scorer.parameters() if p.requires_grad]
    if ckpt.backend(accelerator) == "deepspeed":
        norm = accelerator.clip_grad_norm_(params, max_norm or 0.0)
        return torch.tensor(float("nan") if norm is None else float(norm), dtype=torch.float64)
    if max_norm:
        norm = accelerator.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.zeros((), device=accelerator.device)
    full = getattr(norm, "full_tensor", None)  # FSDP2 may hand back a DTensor
    total: torch.Tensor = full() if callable(full) else norm
    return total.detach()


def _handle_nonfinite(step: int, loss: float, grad_norm: float, opts: TrainOptions, hooks: TrainHooks,
                      paths: TrainPaths) -> None:
    what = f"loss={loss}" if not math.isfinite(loss) else f"grad_norm={grad_norm}"
    last = ckpt.latest_checkpoint(paths.checkpoints) if paths.checkpoints is not None else None
    kept = f"; last good checkpoint: {last}" if last else ""
    if opts.on_nonfinite == "stop":
        raise RunError(f"step {step}: non-finite {what}{kept}. Lower train.learning_rate, check the data, or set "
                       "train.on_nonfinite: skip")
    hooks.on_message(f"warning: step {step}: non-finite {what}; update skipped (train.on_nonfinite: skip)")

"""The train stage: turns the job spec into flat core calls (the only place that reads the spec for training).

Entry: :func:`run_train_stage` with a :class:`~service.runfolder.run.Run` (see :mod:`service.stages.registry`)."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdpo_core import artifact, layout, refcache
from hdpo_core.choices import check_batch_split
from hdpo_core.data import file_fingerprint, load_preference_rows
from hdpo_core.errors import HdpoError, InputError, RunError
from hdpo_core.io import atomic_write_json
from hdpo_core.model import (
    ModelOptions,
    build_policy_and_reference,
    disable_dropout,
    load_tokenizer,
    model_fingerprint,
)
from hdpo_core.quant import write_settings as write_quant_settings
from hdpo_core.tokenize import TokenizedPair, largest_token, token_id_problems, tokenize_rows
from hdpo_core.trainer import EvalSet, TrainHooks, TrainOptions, TrainPaths, make_batcher, train
from service.faults import fault_error
from service.runfolder import ownership
from service.runfolder.record import RunDir
from service.runfolder.run import Run
from service.spec.job import JobSpec
from service.spec.quant import quant_options
from service.stages.tracking import open_metrics_log

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class PreparedData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    info: dict[str, Any]


def model_options(spec: JobSpec, device: str = "cpu") -> ModelOptions:
    """The core's model options; ``device`` is where a quantized base is placed (bitsandbytes quantizes there)."""
    return spec.model.core(quant_options(spec.quantization, spec.model.dtype, device))


_PREPARED: dict[tuple[Any, ...], PreparedData] = {}


def prepare_data(spec: JobSpec, tokenizer: Any) -> PreparedData:
    """Load, check and tokenise the train (and eval) pairs; report skipped rows on stderr.

    Memoised per process on everything the result depends on (files' fingerprints, tokenizer, limits), so
    the variants of a sweep tokenise once."""
    d = spec.data
    key = (d.train, d.eval, d.train_split, d.eval_split, d.max_length, d.overlong, d.on_bad_row, d.max_row_bytes,
           spec.model.name_or_path, spec.model.revision,
           *(file_fingerprint(str(p)) for p in (d.train, d.eval) if p is not None))
    if key not in _PREPARED:
        _PREPARED[key] = _prepare_data(spec, tokenizer)
    cached = _PREPARED[key]
    return PreparedData(cached.train, cached.eval, json.loads(json.dumps(cached.info)))


def _prepare_data(spec: JobSpec, tokenizer: Any) -> PreparedData:
    d = spec.data
    info: dict[str, Any] = {}
    out: dict[str, list[TokenizedPair]] = {"train": [], "eval": []}
    for name, path, split in (("train", d.train, d.train_split), ("eval", d.eval, d.eval_split)):
        if path is None:
            continue
        rows, problems = load_preference_rows(path, on_bad_row=d.on_bad_row, split=split,
                                             max_row_bytes=d.max_row_bytes)
        pairs, problems = tokenize_rows(rows, tokenizer, max_length=d.max_length, overlong=d.overlong,
                                        on_bad_row=d.on_bad_row, problems=problems)
        for msg in problems.messages[:5]:
            print(f"warning: skipped {msg}", file=sys.stderr)
        if problems.skipped:
            print(f"{name} data: {len(pairs)} pairs used; {problems.skipped}", file=sys.stderr)
        out[name] = pairs
        info[name] = {"path": str(path), "fingerprint": file_fingerprint(str(path)), "pairs": len(pairs),
                      "format": rows[0].format, "skipped": problems.skipped,
                      "tokens": sum(p.num_tokens for p in pairs)}
    return PreparedData(out["train"], out["eval"], info)


def total_steps(spec: JobSpec, num_pairs: int) -> int:
    t = spec.train
    if t.max_steps is not None:
        return int(t.max_steps)
    epochs = t.epochs if t.epochs is not None else 1.0
    return max(1, math.ceil(epochs * num_pairs / t.batch_size))


def train_options(spec: JobSpec, steps: int) -> TrainOptions:
    """The loop's options for ``steps`` steps, carrying the ``hdpo`` section's :class:`LossSettings` (the
    trainer builds the alpha controller from them and hands them to the loss)."""
    return spec.train.core(steps, loss=spec.hdpo.core)


def _save_final(model: Any, tokenizer: Any, final: Path, state_dict: dict[str, Any] | None = None) -> None:
    """Write the adapter (LoRA) or the full model with tokenizer into ``final`` (main process), built aside and
    renamed into place with its manifest (:mod:`hdpo_core.artifact`).

    ``state_dict``: the gathered full weights under FSDP/DeepSpeed, where the module's own are shards. Any
    failure removes ``final.tmp``; an I/O fault (an ``OSError``, or safetensors' own error type) is one line."""
    try:
        _write_final(model, tokenizer, final, state_dict)
    except BaseException as exc:
        error = fault_error(exc, "train", final)
        if error is None:
            raise
        raise RunError(f"cannot write the final model to {final} ({_reason(exc)}); the last checkpoint is kept: "
                       "free disk space and rerun the job", exit_code=error.exit_code) from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]


def final_required(folder: Path) -> tuple[str, ...]:
    """The file a finished ``final/`` must hold: the adapter's config (LoRA) or the model's."""
    return ("adapter_config.json",) if (folder / "adapter_config.json").exists() else ("config.json",)


def _write_final(model: Any, tokenizer: Any, final: Path, state_dict: dict[str, Any] | None = None) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = tokenizer.eos_token_id
        gen.pad_token_id = tokenizer.pad_token_id
    with artifact.building(final) as tmp:
        if state_dict is None:
            model.save_pretrained(str(tmp))
        else:
            model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        write_quant_settings(model, tmp)  # QLoRA: final/quantization.json names the k-bit base it was trained on
        problem = artifact.check_required(tmp, final_required(tmp))
        if problem:
            raise RunError(f"the final model in {final} is incomplete ({problem})")


def make_accelerator(spec: JobSpec) -> Accelerator:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from service.stages.runtime import import_deepspeed_only_when_used, wants_cpu

    import_deepspeed_only_when_used()
    acc = Accelerator(mixed_precision=spec.train.mixed_precision, cpu=wants_cpu())
    set_seed(spec.train.seed)
    return acc


#: What a fresh start (``--force``) removes before training: the previous run's training results.
TRAINING_OUTPUTS = (layout.CHECKPOINTS, layout.FINAL, layout.METRICS, layout.TENSORBOARD, layout.TRACKING)


def run_train_stage(run: Run, *, fresh: bool = False) -> dict[str, Any]:
    """Train and write ``final/``; returns the last logged metrics plus data info.

    ``fresh`` (``run --force``) starts over: the checkpoints, final model and metrics that hdpo-tune wrote in
    the folder (its manifest) are removed first, so training never resumes from the checkpoint of the run it
    replaces (possibly another job's); files it did not write stay.
    """
    spec, rd = run.spec, run.folder
    accelerator = make_accelerator(spec)
    if accelerator.is_main_process and ownership.is_owned(rd.path):
        # recorded before they exist: a --force after a SIGKILLed run still removes them
        ownership.record(rd.path, [n for n in (*TRAINING_OUTPUTS, layout.START_MODEL) if not os.path.lexists(rd.path / n)])
    if fresh:
        if accelerator.is_main_process:
            mine = ownership.written(rd.path)
            for name in (layout.CHECKPOINTS, layout.FINAL):  # checkpoints first: a killed --force never resumes the old run
                if name in mine:
                    artifact.discard(rd.path / name)
            ownership.remove_written(rd.path, TRAINING_OUTPUTS)
        accelerator.wait_for_everyone()
    mopts = start_model(spec, rd, accelerator)
    tokenizer = load_tokenizer(mopts)
    data = prepare_data(spec, tokenizer)
    steps = total_steps(spec, len(data.train))
    opts = train_options(spec, steps)
    check_batch_split(opts.batch_size, opts.micro_batch_size, processes=accelerator.num_processes)  # before loading
    _check_backend(spec, accelerator)
    policy, reference = build_policy_and_reference(mopts, spec.lora.core if spec.lora is not None else None)
    for m in (policy, reference):
        if m is not None and spec.lora is None:
            disable_dropout(m)
    if spec.lora is not None:
        disable_dropout(policy.get_base_model())
    _check_token_ids(policy, tokenizer, data)
    make_batch = make_batcher(opts, tokenizer.pad_token_id, policy)
    chunk = spec.train.logps_chunk_size
    ref_cache = eval_cache = None
    if spec.train.precompute_ref_logps:
        ref_cache, eval_cache, data.info["ref_cache"] = _precompute(spec, accelerator, policy, reference, data,
                                                                    make_batch, chunk, mopts)
    if accelerator.is_main_process:
        atomic_write_json(rd.path / layout.DATA_INFO, data.info, indent=1)
    resume = _resume_step(rd.path / layout.CHECKPOINTS)
    log = open_metrics_log(spec, rd.path, resume_step=resume) if accelerator.is_main_process else None
    hooks = TrainHooks(
        on_metrics=(log.write if log else (lambda m: None)),
        on_progress=lambda s, n: rd.write_status("train", "running", step=s, total_steps=n),
    )
    try:
        result = train(accelerator, policy, reference, data.train, pad_token_id=tokenizer.pad_token_id, opts=opts,
                       paths=TrainPaths(rd.path / layout.CHECKPOINTS, rd.path / layout.FINAL), ref_cache=ref_cache,
                       evaluation=EvalSet(data.eval, eval_cache) if data.eval else None,
                       save_final=lambda m, state_dict=None: _save_final(m, tokenizer, rd.path / layout.FINAL, state_dict),
                       hooks=hooks, chunk_size=chunk)
    finally:
        if log:
            log.close()
    return {"steps": result.steps, "resumed_from": result.resumed_from, "metrics": result.last_metrics,
            "data": data.info}


def _check_token_ids(policy: Any, tokenizer: Any, data: PreparedData) -> None:
    """Refuse ids without an embedding row (a tokenizer from another model) before the forward pass fails
    with an IndexError: the core's rule and message, as ``hdpo-tune validate`` reports it (first line here)."""
    problems = token_id_problems(policy.get_input_embeddings().num_embeddings, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, largest=largest_token((*data.train, *data.eval)))
    if problems:
        raise InputError(problems[0])


def start_model(spec: JobSpec, rd: RunDir, accelerator: Accelerator) -> ModelOptions:
    """The model to train, as :class:`ModelOptions`. When ``model.name_or_path`` is a peft adapter folder (an
    SFT LoRA, the usual step before preference tuning) it is first merged into its base, into
    ``RUN/start_model`` (checked: merged logits equal base+adapter; redone only when the adapter changes).
    Policy and reference both start from that folder, so the reference IS the SFT model, also under LoRA
    (adapter-off gives the SFT model, not the raw base: TRL's issue #1340)."""
    from hdpo_core.export import merge
    from hdpo_core.inputs import check_model_folder

    mopts = model_options(spec, str(accelerator.device))
    src = Path(mopts.name_or_path)
    if src.is_dir():
        check_model_folder(src)  # before anything reads adapter_config.json or hashes the folder
    if not merge.is_bare_adapter(src):
        return mopts
    base = merge.base_model_of(src)
    if base is None:
        raise InputError(f"model.name_or_path: {src}/adapter_config.json names no base model "
                         "(base_model_name_or_path); set it to the base model's folder or Hub id")
    out = rd.path / layout.START_MODEL
    if accelerator.is_main_process:
        dtype = merge.default_dtype(base)
        if merge.up_to_date(out, merge.fingerprint(src, dtype)) is None:
            print(f"model: merging the adapter {src} into its base {base} -> {out}", file=sys.stderr)
            try:
                merge.merge_lora(src, out, base_id=base, dtype=dtype, tolerance=1e-3)
            except HdpoError:
                raise
            except Exception as exc:  # transformers/peft raise many types for a missing or mismatched base
                raise InputError(f"model.name_or_path: cannot merge the adapter {src} into its base {base} "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                 "check base_model_name_or_path in its adapter_config.json") from None
    accelerator.wait_for_everyone()
    return replace(mopts, name_or_path=str(out))


def _resume_step(root: Path) -> int | None:
    """The step training will resume from: the newest checkpoint that verifies (the trainer's own choice)."""
    from hdpo_core.checkpoint import usable_checkpoint

    last, _ = usable_checkpoint(root)
    return layout.step_of(last) if last else None


def _precompute(spec: JobSpec, accelerator: Any, policy: Any, reference: Any, data: PreparedData, make_batch: Any,
                chunk: int, mopts: ModelOptions) -> tuple[refcache.RefLogps, refcache.RefLogps | None, dict[str, Any]]:
    """Reference log-probs of the train (and eval) pairs, from the cache folder or computed by the core."""
    cache_dir = Path(spec.train.ref_cache_dir) if spec.train.ref_cache_dir else Path(
        os.environ.get("HDPO_CACHE", Path.home() / ".cache" / "hdpo-tune"))
    fingerprint = model_fingerprint(mopts)
    groups = [pairs for pairs in (data.train, data.eval) if pairs]
    keys = [refcache.cache_key(fingerprint, mopts.dtype, pairs) for pairs in groups]
    sets = [(pairs, refcache.cache_path(cache_dir, key)) for pairs, key in zip(groups, keys, strict=True)]
    done = refcache.precompute_reference(accelerator, reference, policy, sets, make_batch,
                                         batch_pairs=spec.train.micro_batch_size, chunk_size=chunk)
    (ref, hit), eval_ref = done[0], (done[1][0] if len(done) > 1 else None)
    if accelerator.is_main_process:
        print(f"reference log-probs: {'reused cache' if hit else 'computed and cached'} ({cache_dir}, key {keys[0]})",
              file=sys.stderr)
    return ref, eval_ref, {"dir": str(cache_dir), "key": keys[0], "hit": bool(hit)}


def _check_backend(spec: JobSpec, accelerator: Accelerator) -> None:
    """Combinations the engine does not support under DeepSpeed ZeRO-3, where parameters are partitioned from
    the moment the model loads: a frozen full-weight reference copy and scoring before ``prepare``."""
    from hdpo_core.checkpoint import backend

    if spec.quantization is not None and backend(accelerator) in ("deepspeed", "fsdp"):
        raise InputError(f"quantization: not supported under {backend(accelerator)} (the accelerate config shards "
                         "the packed k-bit weights); use DDP or one process")
    if backend(accelerator) != "deepspeed":
        return
    if spec.lora is None:
        raise InputError("train under DeepSpeed: full fine-tuning needs a frozen reference copy, which ZeRO-3 "
                         "partitions at load time; use lora:, or distributed.backend: fsdp")
    if spec.train.precompute_ref_logps:
        raise InputError("train.precompute_ref_logps is not supported under DeepSpeed ZeRO-3 (it scores before "
                         "the engine exists); set it to false, or use distributed.backend: fsdp")

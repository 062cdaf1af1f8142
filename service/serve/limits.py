"""What one served job may cost: the administrator's limits (``hdpo-tune serve --limit NAME=VALUE``).

An API key holder is not the server's administrator: whatever a request says, a job stays within these bounds
(training length, batch and sequence sizes, evaluation samples, the code sandbox's memory, processes). A job
over a limit is refused when it is created (400 naming the field, its value and the limit, and the option that
raises it), before a run folder exists. The defaults let the demo and a real small run through and stop the
requests that would occupy a GPU for weeks or ask for a terabyte of memory.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hdpo_core.errors import InputError
from service.spec.job import JobSpec

from .errors import ApiError

#: deepest nesting of a JSON request body (a spec is 3 levels deep; pydantic gives up at a few hundred)
MAX_BODY_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """Per-job bounds; the field names are the ``--limit`` names (docs/service.md has the table)."""

    max_steps: int = 20_000  # optimizer steps (train.max_steps, or epochs x rows / batch_size)
    max_train_pairs: int = 2_000_000  # pairs trained on: steps x batch_size
    max_batch_size: int = 512  # train.batch_size, train.micro_batch_size, eval.max_batch_size
    max_seq_len: int = 8192  # data.max_length, eval.max_new_tokens, export.onnx.greedy_tokens/decode_steps
    max_row_tokens: int = 32_768  # train.row_tokens, train.logps_chunk_size
    max_eval_samples: int = 20_000  # eval.tasks rows x n_samples x temperatures (x2 with compare_reference)
    max_sandbox_mb: int = 2048  # eval.memory_mb: the code sandbox's memory per sample
    max_processes: int = 1  # distributed.num_processes x num_machines (a served job is one process)
    max_checkpoints: int = 5  # train.keep_checkpoints (disk)
    max_lora_rank: int = 256  # lora.r
    max_row_bytes: int = 4 << 20  # data.max_row_bytes: one row's bytes (tokenizing a huge row costs minutes)


def parse_limits(items: list[str]) -> Limits:
    """``["max_steps=5000", ...]`` -> :class:`Limits` (one line naming the item for a bad one)."""
    names = [f.name for f in dataclasses.fields(Limits)]
    values: dict[str, int] = {}
    for item in items:
        name, _, raw = item.partition("=")
        if name not in names:
            raise InputError(f"--limit {item}: unknown limit '{name}'; the limits are {names}")
        if not raw.isdigit() or int(raw) < 1:
            raise InputError(f"--limit {item}: the value must be a positive integer")
        values[name] = int(raw)
    return Limits(**values)


def check_depth(value: object, where: str) -> None:
    """400 when ``value`` nests deeper than :data:`MAX_BODY_DEPTH` (checked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_BODY_DEPTH:
            raise ApiError(400, f"{where}: nested deeper than {MAX_BODY_DEPTH} levels; a job spec is a few levels "
                           "deep", param=where, code="invalid_request")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _over(field: str, value: float, limit: int, name: str, what: str = "") -> ApiError:
    shown = int(value) if float(value).is_integer() else value
    return ApiError(400, f"{field}: {shown}{what} is over this server's limit {name} = {limit}; ask for less, or "
                    f"ask the administrator (hdpo-tune serve --limit {name}=N)", param=field, code="over_limit")


def check_limits(limits: Limits, spec: JobSpec, *, train_rows: int | None, task_rows: int | None) -> None:
    """400 for the first field of ``spec`` over a limit. ``train_rows``/``task_rows``: rows of the uploaded
    training and eval task files (None for a Hub dataset, whose size the server cannot know in advance)."""
    t, ev = spec.train, spec.eval
    single = [("train.batch_size", t.batch_size, "max_batch_size"),
              ("train.micro_batch_size", t.micro_batch_size, "max_batch_size"),
              ("data.max_length", spec.data.max_length, "max_seq_len"),
              ("train.row_tokens", t.row_tokens, "max_row_tokens"),
              ("train.logps_chunk_size", t.logps_chunk_size, "max_row_tokens"),
              ("train.keep_checkpoints", t.keep_checkpoints, "max_checkpoints"),
              ("data.max_row_bytes", spec.data.max_row_bytes, "max_row_bytes"),
              ("distributed.num_processes", spec.distributed.num_processes * spec.distributed.num_machines,
               "max_processes")]
    if spec.lora is not None:
        single.append(("lora.r", spec.lora.r, "max_lora_rank"))
    if ev is not None and ev.enabled:
        single += [("eval.max_batch_size", ev.max_batch_size, "max_batch_size"),
                   ("eval.max_new_tokens", ev.max_new_tokens, "max_seq_len"),
                   ("eval.memory_mb", ev.memory_mb, "max_sandbox_mb")]
    if spec.export is not None:
        single += [("export.onnx.greedy_tokens", spec.export.onnx.greedy_tokens, "max_seq_len"),
                   ("export.onnx.decode_steps", spec.export.onnx.decode_steps, "max_seq_len"),
                   ("export.onnx.quantized_eval_tasks", spec.export.onnx.quantized_eval_tasks, "max_eval_samples")]
    for field, value, name in single:
        if value > getattr(limits, name):
            raise _over(field, value, getattr(limits, name), name)
    _check_length(limits, spec, train_rows)
    if ev is not None and ev.enabled and ev.tasks is not None:
        if task_rows is None:
            raise ApiError(400, "eval.tasks: the size of a Hub dataset cannot be checked against this server's "
                           "limits; upload the task file (purpose 'user_data') and pass its id", param="eval.tasks",
                           code="over_limit")
        samples = task_rows * ev.n_samples * len(ev.temperatures) * (2 if ev.compare_reference else 1)
        if samples > limits.max_eval_samples:
            raise _over("eval.n_samples", samples, limits.max_eval_samples, "max_eval_samples",
                        f" samples ({task_rows} tasks x n_samples {ev.n_samples} x {len(ev.temperatures)} "
                        f"temperatures{' x 2 models' if ev.compare_reference else ''})")


def _check_length(limits: Limits, spec: JobSpec, train_rows: int | None) -> None:
    t = spec.train
    if t.max_steps is not None:
        steps, field = t.max_steps, "train.max_steps"
    elif train_rows is None:
        raise ApiError(400, "train.epochs: the size of a Hub dataset cannot be checked against this server's "
                       "limits; set train.max_steps instead", param="train.epochs", code="over_limit")
    elif not math.isfinite(t.epochs or 1.0):
        raise ApiError(400, f"train.epochs: {t.epochs} is not a finite number", param="train.epochs",
                       code="over_limit")
    else:
        steps, field = math.ceil((t.epochs or 1.0) * train_rows / t.batch_size), "train.epochs"
    if steps > limits.max_steps:
        raise _over(field, t.max_steps or (t.epochs or 1.0), limits.max_steps, "max_steps",
                    f" ({steps} optimizer steps)" if field == "train.epochs" else "")
    if steps * t.batch_size > limits.max_train_pairs:
        raise _over(field, t.max_steps or (t.epochs or 1.0), limits.max_train_pairs, "max_train_pairs",
                    f" ({steps} steps x batch_size {t.batch_size} = {steps * t.batch_size} pairs)")

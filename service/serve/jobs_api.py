"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning jobs (create, list, retrieve, cancel, events, checkpoints).

OpenAI's request fields map onto the job spec (see docs/service.md for the table): ``method.dpo.hyperparameters``
``beta`` -> ``hdpo.beta``, ``batch_size`` -> ``train.batch_size``, ``n_epochs`` -> ``train.epochs``,
``learning_rate_multiplier`` x the spec's default learning rate -> ``train.learning_rate``; ``seed`` ->
``train.seed``. What OpenAI's shape cannot say (H-DPO's ``alpha``, ``alpha: auto``, LoRA, QLoRA's
``quantization``, steps...) goes in the
``hdpo_tune`` extension field (the SDK's ``extra_body``): spec sections laid over those defaults. A served job
trains with LoRA (defaults) and merges, so ``fine_tuned_model`` names a full model.
"""

from __future__ import annotations

import math
import secrets
import shutil
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Row
from sqlalchemy.orm import Session

from hdpo_core.layout import CHECKPOINT_STATE, RunLayout, step_of
from service.spec.job import JobSpec
from service.spec.job import TrainSpec as _TrainSpec

from . import store
from .db import EventRow, JobRow, new_id, now
from .deps import Caller, Ctx, Db, ServerContext, server
from .errors import ApiError, not_found
from .finish import ft_name
from .jobspec import SUFFIX_RE, admin_settings, resolve_refs, run_dir_of, write_spec
from .limits import check_depth, check_limits
from .progress import all_metrics
from .schemas import (
    ERRORS,
    CheckpointMetrics,
    CursorPage,
    DpoHyperparameters,
    DpoMethod,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobError,
    JobExtension,
    JobHyperparameters,
    JobMethod,
    MethodExtension,
    cursor_page,
)

router = APIRouter(responses=ERRORS)
BASE_LR: float = _TrainSpec.model_fields["learning_rate"].default
HYPERPARAMETERS = ("beta", "batch_size", "learning_rate_multiplier", "n_epochs")
TERMINAL = ("succeeded", "failed", "cancelled")


class CreateJob(BaseModel):
    """OpenAI's create body. Unknown fields are errors, as OpenAI's are."""

    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    method: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    hdpo_tune: dict[str, Any] | None = None


def _hyper(hp: dict[str, Any], name: str, *, integer: bool = False) -> float | None:
    """A hyperparameter's value: None for absent or "auto", else a positive finite number (400 otherwise)."""
    value = hp.get(name)
    if value is None or value == "auto":
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and not float(value).is_integer()):
        where = f"method.dpo.hyperparameters.{name}"
        raise ApiError(400, f"{where}: must be a positive {'integer' if integer else 'number'} or \"auto\", got "
                       f"{str(value)[:40]!r}", param=where, code="invalid_hyperparameters")
    return int(value) if integer else float(value)


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{where}: must be an object, got {type(value).__name__}", param=where,
                       code="invalid_request")
    return value


def openai_spec(req: CreateJob) -> dict[str, Any]:
    """The job spec (file ids and model name not yet resolved) of an OpenAI create request."""
    for name in ("method", "hyperparameters", "hdpo_tune", "integrations"):
        check_depth(getattr(req, name), name)
    method = req.method or {"type": "dpo"}
    if method.get("type") != "dpo":
        raise ApiError(400, f"method.type '{str(method.get('type'))[:40]}' is not supported; this server trains "
                       "with DPO / H-DPO only: method={'type': 'dpo', ...}", param="method.type",
                       code="unsupported_method")
    if req.integrations:
        raise ApiError(400, "integrations are not supported (metrics are in the job's events and result file)",
                       param="integrations", code="unsupported_parameter")
    hp = (_dict(_dict(method.get("dpo"), "method.dpo").get("hyperparameters"), "method.dpo.hyperparameters")
          or _dict(req.hyperparameters, "hyperparameters"))
    unknown = sorted(set(hp) - set(HYPERPARAMETERS))
    if unknown:
        raise ApiError(400, f"method.dpo.hyperparameters: unknown {unknown}; OpenAI's are {list(HYPERPARAMETERS)}; "
                       "H-DPO settings such as alpha go in the hdpo_tune extension field", param="hyperparameters",
                       code="invalid_hyperparameters")
    train: dict[str, Any] = {"seed": req.seed if req.seed is not None else secrets.randbelow(2**31)}
    hdpo: dict[str, Any] = {}
    if (beta := _hyper(hp, "beta")) is not None:
        hdpo["beta"] = beta
    if (epochs := _hyper(hp, "n_epochs")) is not None:
        train["epochs"] = epochs
    if (multiplier := _hyper(hp, "learning_rate_multiplier")) is not None:
        train["learning_rate"] = BASE_LR * multiplier
    if (batch := _hyper(hp, "batch_size", integer=True)) is not None:
        b = int(batch)
        train["batch_size"] = b
        train["micro_batch_size"] = max(d for d in range(1, min(b, 8) + 1) if b % d == 0)
    data: dict[str, Any] = {"train": req.training_file}
    if req.validation_file:
        data["eval"] = req.validation_file
    spec: dict[str, Any] = {"model": {"name_or_path": req.model}, "lora": {}, "data": data, "hdpo": hdpo,
                            "train": train, "merge": {}}
    for section, value in (req.hdpo_tune or {}).items():
        if section == "model" and isinstance(value, dict) and "name_or_path" in value:
            raise ApiError(400, "hdpo_tune.model.name_or_path: use the model field", param="hdpo_tune.model")
        if section == "data" and isinstance(value, dict) and {"train", "eval"} & set(value):
            raise ApiError(400, "hdpo_tune.data.train/eval: use training_file/validation_file", param="hdpo_tune.data")
        if isinstance(value, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **value}
        else:
            spec[section] = value
    return spec


def method_echo(spec: JobSpec) -> dict[str, Any]:
    """The effective hyperparameters, in OpenAI's shape plus the H-DPO ones (stored as the job's ``method``)."""
    t = spec.train
    epochs: int | float | Literal["auto"] = "auto"
    if t.epochs is not None:
        epochs = int(t.epochs) if float(t.epochs).is_integer() else t.epochs
    hp = DpoHyperparameters(beta=spec.hdpo.core.beta, batch_size=t.batch_size,
                            learning_rate_multiplier=t.learning_rate / BASE_LR, n_epochs=epochs)
    extension = MethodExtension(alpha=spec.hdpo.core.alpha, max_steps=t.max_steps, learning_rate=t.learning_rate,
                                lora=spec.lora is not None,
                                quantization=spec.quantization.model_dump() if spec.quantization else None)
    return JobMethod(dpo=DpoMethod(hyperparameters=hp), hdpo_tune=extension).model_dump(mode="json")


def job_object(job: JobRow | Row[Any]) -> FineTuningJob:
    """The API's job object, from the ORM row or a Core row of the jobs table (same attribute names)."""
    method = JobMethod.model_validate(job.method)
    hp = method.dpo.hyperparameters if method.dpo is not None else DpoHyperparameters()
    return FineTuningJob(
        id=job.id, created_at=job.created_at, error=None if job.error is None else JobError.model_validate(job.error),
        fine_tuned_model=job.fine_tuned_model, finished_at=job.finished_at,
        hyperparameters=JobHyperparameters(batch_size=hp.batch_size, learning_rate_multiplier=hp.learning_rate_multiplier,
                                           n_epochs=hp.n_epochs),
        model=job.model, organization_id=job.owner, result_files=job.result_files or [], seed=job.seed,
        status=job.status, trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file, estimated_finish=None, integrations=[], metadata=job.job_metadata,
        method=method, user_provided_suffix=job.suffix,
        hdpo_tune=JobExtension(stage=job.last_stage or None, step=job.last_metrics_step, attempts=job.attempts,
                               cancel_requested=job.cancel_requested, started_at=job.started_at))


def _check_meta(suffix: str | None, metadata: dict[str, str] | None) -> None:
    if suffix is not None and not SUFFIX_RE.fullmatch(suffix):
        raise ApiError(400, f"suffix '{suffix[:80]}': use 1-64 letters, digits, '-' or '_'", param="suffix")
    if metadata and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
        raise ApiError(400, "metadata: at most 16 pairs, keys up to 64 and values up to 512 characters",
                       param="metadata")


def _rows(db: Session, owner: str, spec: dict[str, Any], section: str, key: str) -> int | None:
    """Rows of the uploaded file a spec field names (None: a Hub dataset, or the field is not set)."""
    sec = spec.get(section)
    ref = sec.get(key) if isinstance(sec, dict) else None
    if not isinstance(ref, str) or not ref.startswith("file-"):
        return None
    row = store.owned_file(db, owner, ref)
    return row.rows if row is not None else None


def create_job(ctx: ServerContext, db: Session, owner: str, spec: dict[str, Any], *, model: str, training_file: str,
               validation_file: str | None, suffix: str | None, metadata: dict[str, str] | None,
               request: dict[str, Any]) -> JobRow:
    """Resolve, write and check the spec, then queue the job (shared by the OpenAI and native endpoints)."""
    _check_meta(suffix, metadata)
    job_id = new_id("ftjob")
    resolved = admin_settings(ctx.config, job_id, resolve_refs(ctx.config, db, owner, spec))
    checked = write_spec(ctx.config, job_id, resolved)
    try:
        check_limits(ctx.config.limits, checked, train_rows=_rows(db, owner, spec, "data", "train"),
                     task_rows=_rows(db, owner, spec, "eval", "tasks"))
    except ApiError:
        shutil.rmtree(run_dir_of(ctx.config, job_id), ignore_errors=True)
        raise
    return store.queue_job(db, JobRow(
        id=job_id, owner=owner, status="validating_files", model=model, training_file=training_file,
        validation_file=validation_file, seed=checked.train.seed, suffix=suffix, job_metadata=metadata,
        method=method_echo(checked), request=request, created_at=now(), result_files=[], attempts=0,
        cancel_requested=False, last_metrics_step=0, last_stage="", stages_reported=[]))


def owned_job(db: Session, owner: str, job_id: str) -> JobRow:
    job = store.owned_job(db, owner, job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


@router.post("/fine_tuning/jobs", response_model=FineTuningJob)
def create(ctx: Ctx, db: Db, key: Caller, body: CreateJob) -> FineTuningJob:
    spec = openai_spec(body)
    job = create_job(ctx, db, key.id, spec, model=body.model, training_file=body.training_file,
                     validation_file=body.validation_file, suffix=body.suffix, metadata=body.metadata,
                     request=body.model_dump(mode="json"))
    return job_object(job)


@router.get("/fine_tuning/jobs", response_model=CursorPage[FineTuningJob])
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> CursorPage[FineTuningJob]:
    """The status path (:func:`.store.job_page`): Core queries on a pooled connection, no dependency chain."""
    rows, more = store.job_page(server(request).engine, request.headers.get("authorization", ""), after=after,
                                limit=limit)
    return cursor_page([job_object(r) for r in rows], more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob)
async def retrieve(request: Request, job_id: str) -> FineTuningJob:
    row = store.job_row(server(request).engine, request.headers.get("authorization", ""), job_id)
    if row is None:
        raise not_found("fine-tuning job", job_id)
    return job_object(row)


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob)
async def cancel(db: Db, key: Caller, job_id: str) -> FineTuningJob:
    """Queued: cancelled at once. Running: SIGTERM from the scheduler, a checkpoint, then ``cancelled``."""
    job = owned_job(db, key.id, job_id)
    if job.status in TERMINAL:
        raise ApiError(400, f"{job_id} has already {'been cancelled' if job.status == 'cancelled' else 'finished'} "
                       f"(status {job.status})", param="fine_tuning_job_id", code="job_not_cancellable")
    return job_object(store.request_cancel(db, job))


def event_object(ev: EventRow) -> FineTuningJobEvent:
    return FineTuningJobEvent(id=ev.id, created_at=ev.created_at, level=ev.level, message=ev.message, data=ev.data,
                              type=ev.type)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=CursorPage[FineTuningJobEvent])
async def events(db: Db, key: Caller, job_id: str, after: str | None = None,
                 limit: int = 20) -> CursorPage[FineTuningJobEvent]:
    owned_job(db, key.id, job_id)
    rows, more = store.event_page(db, job_id, after=after, limit=limit)
    return cursor_page([event_object(r) for r in rows], more)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=CursorPage[FineTuningJobCheckpoint])
def checkpoints(ctx: Ctx, db: Db, key: Caller, job_id: str, after: str | None = None,
                limit: int = 10) -> CursorPage[FineTuningJobCheckpoint]:
    """The resumable checkpoints on disk (``train.keep_checkpoints`` most recent), newest first."""
    if not 1 <= limit <= 100:
        raise ApiError(400, f"limit must be between 1 and 100, got {limit}", param="limit", code="invalid_limit")
    job = owned_job(db, key.id, job_id)
    folders = RunLayout(ctx.config.runs_dir / job.id).list_checkpoints()[::-1]
    by_step = {r["step"]: r for r in all_metrics(ctx.config.runs_dir / job.id)}
    items = []
    for folder in folders:
        step = step_of(folder)
        rec = by_step.get(step, {})
        items.append(FineTuningJobCheckpoint(
            id=f"ftckpt-{job.id.split('-', 1)[1]}-{step}", created_at=int((folder / CHECKPOINT_STATE).stat().st_mtime),
            fine_tuned_model_checkpoint=f"{ft_name(job)}:ckpt-step-{step}", fine_tuning_job_id=job.id,
            step_number=step, metrics=CheckpointMetrics(step=step, train_loss=rec.get("loss"),
                                                        valid_loss=rec.get("eval/loss"))))
    ids = [i.id for i in items]
    start = ids.index(after) + 1 if after in ids else 0
    if after and after not in ids:
        raise ApiError(400, f"after: no such checkpoint {after}", param="after", code="invalid_cursor")
    return cursor_page(items[start:start + limit], start + limit < len(items))

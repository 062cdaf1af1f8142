"""hdpo-tune's own endpoints: a job from a full job spec, and a finished job's artifacts as a tar stream.

``POST /v1/hdpo/jobs`` takes ``{"spec": {...}}``: the same pydantic ``JobSpec`` as ``hdpo-tune run``, with the
same messages, except that files are uploaded file ids, models are model names (see :mod:`.jobspec`) and the
server picks the run folder. The job is then an ordinary fine-tuning job (list, events, cancel...).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from hdpo_core import artifact, layout
from hdpo_core.public_paths import public_path

from .db import ApiKey
from .deps import Caller, Ctx, Db, ServerContext
from .errors import ApiError
from .jobs_api import create_job, job_object, owned_job
from .limits import check_depth
from .schemas import ERRORS, FineTuningJob

router = APIRouter(responses=ERRORS)
PARTS = (layout.FINAL, layout.MERGED, layout.ONNX, layout.EVAL)


class NativeJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]
    suffix: str | None = None
    metadata: dict[str, str] | None = None


@router.post("/hdpo/jobs", response_model=FineTuningJob)
def create(ctx: Ctx, db: Db, key: Caller, body: NativeJob) -> FineTuningJob:
    return create_native(ctx, db, key, body)


def create_native(ctx: ServerContext, db: Session, key: ApiKey, body: NativeJob) -> FineTuningJob:
    """A job from a full spec (the console's new-job form calls it too)."""
    check_depth(body.spec, "spec")
    spec = body.spec
    model_section, data = spec.get("model"), spec.get("data")
    model = model_section.get("name_or_path") if isinstance(model_section, dict) else None
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(model, str) or not isinstance(train, str):
        raise ApiError(400, "spec: needs model.name_or_path (a model name) and data.train (an uploaded file id)",
                       param="spec", code="invalid_spec")
    validation = data.get("eval") if isinstance(data, dict) else None
    job = create_job(ctx, db, key.id, spec, model=model, training_file=train,
                     validation_file=validation if isinstance(validation, str) else None, suffix=body.suffix,
                     metadata=body.metadata, request=body.model_dump(mode="json"))
    return job_object(job)


class _Sink:
    """A write-only file object whose bytes are handed out in chunks as the tar is written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, b: bytes) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def _files(root: Path) -> list[Path]:
    """Regular files under ``root``; links are neither followed nor sent (nothing outside the run folder)."""
    out: list[Path] = []
    for folder, _dirs, names in os.walk(root):  # os.walk does not descend into linked folders
        out.extend(Path(folder) / n for n in names if not (Path(folder) / n).is_symlink())
    return sorted(out)


#: files peft writes naming the base model by its absolute path on this server (the pipeline reads
#: final/adapter_config.json back to load the base, so the file on disk keeps it)
PEFT_FILES = ("adapter_config.json", "README.md")


def _public_final(final: Path, run_dir: Path) -> dict[str, bytes]:
    """What a download sends instead of ``final/``'s peft files: the base named publicly (the model's name, or
    a path inside the run folder), and ``checksums.json`` updated to match, so the downloaded folder still
    verifies against its manifest. Empty for a full model (no adapter config)."""
    try:
        config = json.loads((final / "adapter_config.json").read_text(encoding="utf-8"))
        manifest = json.loads((final / artifact.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(base, str) or public_path(base, run_dir) == base:
        return {}
    public = public_path(base, run_dir)
    out = {}
    for name in PEFT_FILES:
        path = final / name
        if path.is_file() and not path.is_symlink():
            out[name] = path.read_bytes().replace(base.encode(), public.encode())
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        for name, blob in out.items():
            files[name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        out[artifact.MANIFEST] = json.dumps(manifest, indent=1).encode()
    return out


def check_whole(run_dir: Path, parts: list[str], job_id: str) -> None:
    """409 unless every part verifies against its manifest: like push, a download never sends a half-built or
    damaged folder."""
    for part in parts:
        problem = artifact.verify(run_dir / part)
        if problem is not None:
            raise ApiError(409, f"{part}/ of {job_id} is not whole ({problem}): its files changed or were damaged "
                           "after the job finished, so it is not sent", param="parts", code="artifact_damaged")


def tar_stream(run_dir: Path, parts: list[str], name: str) -> Iterator[bytes]:
    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for part in parts:
            replaced = _public_final(run_dir / part, run_dir) if part == layout.FINAL else {}
            for path in _files(run_dir / part):
                arcname = f"{name}/{path.relative_to(run_dir)}"
                blob = replaced.get(path.relative_to(run_dir / part).as_posix())
                if blob is None:
                    tar.add(path, arcname=arcname, recursive=False)
                else:
                    info = tar.gettarinfo(path, arcname=arcname)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
                yield sink.take()
    yield sink.take()


@router.get("/hdpo/jobs/{job_id}/artifacts")
def artifacts(ctx: Ctx, db: Db, key: Caller, job_id: str, parts: str | None = None) -> StreamingResponse:
    """A tar of the succeeded job's ``final/`` (adapter or model), ``merged/``, ``onnx/`` and ``eval/``
    (those that exist, or those named in ``parts=merged,onnx``)."""
    job = owned_job(db, key.id, job_id)
    if job.status != "succeeded":
        raise ApiError(409, f"{job_id} has status {job.status}; artifacts are ready once it has succeeded",
                       param="fine_tuning_job_id", code="job_not_finished")
    run_dir = ctx.config.runs_dir / job.id
    wanted = [p.strip() for p in parts.split(",")] if parts else [p for p in PARTS if (run_dir / p).is_dir()]
    bad = [p for p in wanted if p not in PARTS or not (run_dir / p).is_dir()]
    if bad:
        have = [p for p in PARTS if (run_dir / p).is_dir()]
        raise ApiError(400, f"parts: {bad} not available for {job_id}; this job has {have}", param="parts",
                       code="invalid_parts")
    check_whole(run_dir, wanted, job_id)
    headers = {"Content-Disposition": f'attachment; filename="{job.id}.tar"'}
    return StreamingResponse(tar_stream(run_dir, wanted, job.id), media_type="application/x-tar", headers=headers)

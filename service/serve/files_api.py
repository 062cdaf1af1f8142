"""``/v1/files``: upload (validated), list, retrieve, content, delete. Every file belongs to one key."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from .datafile import BadRow, check_jsonl, check_upload
from .db import FileRow, JobRow, new_id, now
from .deps import Caller, Ctx, Db
from .errors import ApiError, not_found
from .paging import page

router = APIRouter()
ACTIVE = ("validating_files", "queued", "running")


def file_object(row: FileRow) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": row.created_at,
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


def stored_path(files_dir: Path, row: FileRow) -> Path:
    return files_dir / f"{row.id}.jsonl"


def training_path(files_dir: Path, row: FileRow) -> Path:
    """The file the pipeline reads: the upload itself, or its TRL conversion (OpenAI DPO format)."""
    converted = files_dir / f"{row.id}.trl.jsonl"
    return converted if row.data_format == "openai-dpo" else stored_path(files_dir, row)


def owned_file(db: Db, owner: str, file_id: str) -> FileRow:
    row = db.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.owner == owner))
    if row is None:
        raise not_found("File", file_id)
    return row


#: the temporary names of an upload being stored and checked (:func:`upload`)
TEMP_RE = re.compile(r"\.tmp-file-[0-9a-f]{24}(\.trl)?\.jsonl")


def remove_stale_uploads(files_dir: Path) -> list[str]:
    """Remove the temporaries of uploads a killed server left (ours by name, regular files only); at start,
    before any upload can be in flight. Returns the names removed."""
    removed = []
    for entry in os.scandir(files_dir):
        if TEMP_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def _safe_name(name: str | None) -> str:
    base = os.path.basename((name or "upload.jsonl").replace("\\", "/"))
    return "".join(c for c in base if c.isprintable())[:200] or "upload.jsonl"


@router.post("/files")
def upload(ctx: Ctx, db: Db, key: Caller, file: Annotated[UploadFile, File()],
           purpose: Annotated[str, Form()]) -> dict[str, Any]:
    """Store and validate a ``fine-tune`` JSONL file; a bad row is a 400 naming ``filename:line``."""
    if purpose not in ("fine-tune", "user_data"):
        raise ApiError(400, f"purpose '{purpose}' is not supported here; upload preference pairs with "
                       "purpose='fine-tune' (or an eval task file with 'user_data')", param="purpose",
                       code="invalid_purpose")
    name = _safe_name(file.filename)
    if not name.endswith(".jsonl"):
        raise ApiError(400, f"{name}: fine-tuning files must be JSONL (one JSON object per line, name ending in "
                       ".jsonl)", param="file", code="invalid_file_format")
    ctx.config.files_dir.mkdir(parents=True, exist_ok=True)
    file_id = new_id("file")
    dest = ctx.config.files_dir / f"{file_id}.jsonl"
    tmp = ctx.config.files_dir / f".tmp-{file_id}.jsonl"
    try:
        with tmp.open("wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        info = check_upload(tmp, name) if purpose == "fine-tune" else check_jsonl(tmp, name)
        if info.data_format == "openai-dpo":
            os.replace(info.train_path, dest.with_suffix(".trl.jsonl"))
        size = tmp.stat().st_size
        os.replace(tmp, dest)
    except BadRow as exc:
        raise ApiError(400, exc.message, param="file", code="invalid_file_format", extra={"line": exc.line}) from None
    finally:  # nothing half-stored stays (a killed server's leftovers go at the next start)
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".trl.jsonl").unlink(missing_ok=True)
    row = FileRow(id=file_id, owner=key.id, filename=name, purpose=purpose, bytes=size, created_at=now(),
                  rows=info.rows, data_format=info.data_format)
    db.add(row)
    db.commit()
    return file_object(row)


@router.get("/files")
async def list_files(db: Db, key: Caller, after: str | None = None, limit: int = 10000, order: str = "desc",
               purpose: str | None = None) -> dict[str, Any]:
    query = select(FileRow).where(FileRow.owner == key.id)
    if purpose:
        query = query.where(FileRow.purpose == purpose)
    return page(db, FileRow, query, after=after, limit=limit, order=order, render=file_object, max_limit=10000)


@router.get("/files/{file_id}")
async def retrieve(db: Db, key: Caller, file_id: str) -> dict[str, Any]:
    return file_object(owned_file(db, key.id, file_id))


@router.get("/files/{file_id}/content")
def content(ctx: Ctx, db: Db, key: Caller, file_id: str) -> FileResponse:
    row = owned_file(db, key.id, file_id)
    media = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    path = ctx.config.files_dir / (f"{row.id}.csv" if row.purpose == "fine-tune-results" else f"{row.id}.jsonl")
    return FileResponse(path, media_type=media, filename=row.filename)


@router.delete("/files/{file_id}")
async def delete(ctx: Ctx, db: Db, key: Caller, file_id: str) -> dict[str, Any]:
    row = owned_file(db, key.id, file_id)
    busy = db.scalar(select(JobRow.id).where(JobRow.owner == key.id, JobRow.status.in_(ACTIVE),
                                             (JobRow.training_file == file_id) | (JobRow.validation_file == file_id)))
    if busy is not None:
        raise ApiError(409, f"{file_id} is used by {busy}, which has not finished; cancel the job or wait for it "
                       "before deleting the file", param="file_id", code="file_in_use")
    for suffix in (".jsonl", ".trl.jsonl", ".csv"):
        (ctx.config.files_dir / f"{row.id}{suffix}").unlink(missing_ok=True)
    db.delete(row)
    db.commit()
    return {"id": file_id, "object": "file", "deleted": True}

"""``/v1/files``: upload (validated), list, retrieve, content, delete. Every file belongs to one key."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from . import store
from .datafile import BadRow, check_jsonl, check_upload
from .db import ApiKey, FileRow, new_id
from .deps import Caller, Ctx, Db, ServerContext
from .errors import ApiError, not_found
from .schemas import ERRORS, CursorPage, FileDeleted, FileObject, FilePurpose, cursor_page

router = APIRouter(responses=ERRORS)


def file_object(row: FileRow) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose)


def stored_path(files_dir: Path, row: FileRow) -> Path:
    return files_dir / f"{row.id}.jsonl"


def training_path(files_dir: Path, row: FileRow) -> Path:
    """The file the pipeline reads: the upload itself, or its TRL conversion (OpenAI DPO format)."""
    converted = files_dir / f"{row.id}.trl.jsonl"
    return converted if row.data_format == "openai-dpo" else stored_path(files_dir, row)


def owned_file(db: Session, owner: str, file_id: str) -> FileRow:
    row = store.owned_file(db, owner, file_id)
    if row is None:
        raise not_found("File", file_id)
    return row


#: the temporary names of an upload being stored and checked (:func:`upload`)
TEMP_RE = re.compile(r"\.tmp-file-[0-9a-f]{24}(\.trl)?\.jsonl")


def remove_stale_uploads(files_dir: Path) -> list[str]:
    """Remove the temporaries of uploads a killed server left (ours by name, regular files only); at start,
    before any upload can be in flight. Returns the names removed."""
    removed: list[str] = []
    for entry in os.scandir(files_dir):
        if TEMP_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def _safe_name(name: str | None) -> str:
    base = os.path.basename((name or "upload.jsonl").replace("\\", "/"))
    return "".join(c for c in base if c.isprintable())[:200] or "upload.jsonl"


@router.post("/files", response_model=FileObject)
def upload(ctx: Ctx, db: Db, key: Caller, file: Annotated[UploadFile, File()],
           purpose: Annotated[str, Form()]) -> FileObject:
    """Store and validate a ``fine-tune`` JSONL file; a bad row is a 400 naming ``filename:line``."""
    return store_upload(ctx, db, key, file, purpose)


def store_upload(ctx: ServerContext, db: Session, key: ApiKey, file: UploadFile, purpose: str) -> FileObject:
    """The upload route's work (the console's upload calls it too)."""
    kind: FilePurpose
    if purpose == "fine-tune":
        kind = "fine-tune"
    elif purpose == "user_data":
        kind = "user_data"
    else:
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
        info = check_upload(tmp, name) if kind == "fine-tune" else check_jsonl(tmp, name)
        if info.data_format == "openai-dpo":
            os.replace(info.train_path, dest.with_suffix(".trl.jsonl"))
        size = tmp.stat().st_size
        os.replace(tmp, dest)
    except BadRow as exc:
        raise ApiError(400, exc.message, param="file", code="invalid_file_format", extra={"line": exc.line}) from None
    finally:  # nothing half-stored stays (a killed server's leftovers go at the next start)
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".trl.jsonl").unlink(missing_ok=True)
    return file_object(store.add_file(db, file_id=file_id, owner=key.id, filename=name, purpose=kind,
                                      size=size, rows=info.rows, data_format=info.data_format))


@router.get("/files", response_model=CursorPage[FileObject])
async def list_files(db: Db, key: Caller, after: str | None = None, limit: int = 10000, order: str = "desc",
                     purpose: str | None = None) -> CursorPage[FileObject]:
    rows, more = store.file_page(db, key.id, purpose=purpose, after=after, limit=limit, order=order)
    return cursor_page([file_object(r) for r in rows], more)


@router.get("/files/{file_id}", response_model=FileObject)
async def retrieve(db: Db, key: Caller, file_id: str) -> FileObject:
    return file_object(owned_file(db, key.id, file_id))


@router.get("/files/{file_id}/content")
def content(ctx: Ctx, db: Db, key: Caller, file_id: str) -> FileResponse:
    row = owned_file(db, key.id, file_id)
    media = "text/csv" if row.filename.endswith(".csv") else "application/jsonl"
    path = ctx.config.files_dir / (f"{row.id}.csv" if row.purpose == "fine-tune-results" else f"{row.id}.jsonl")
    return FileResponse(path, media_type=media, filename=row.filename)


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete(ctx: Ctx, db: Db, key: Caller, file_id: str) -> FileDeleted:
    row = owned_file(db, key.id, file_id)
    busy = store.job_using(db, key.id, file_id)
    if busy is not None:
        raise ApiError(409, f"{file_id} is used by {busy}, which has not finished; cancel the job or wait for it "
                       "before deleting the file", param="file_id", code="file_in_use")
    for suffix in (".jsonl", ".trl.jsonl", ".csv"):
        (ctx.config.files_dir / f"{row.id}{suffix}").unlink(missing_ok=True)
    store.delete_file(db, row)
    return FileDeleted(id=file_id, deleted=True)

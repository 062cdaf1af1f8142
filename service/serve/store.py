"""Every read and write of the service's database: API keys, files, jobs, events, the scheduler's claims, and
the polled status path.

Routes, the console, the scheduler and the CLI call these functions with a session; none of them builds a
query or adds a row itself (FastAPI's full-stack template keeps its ``crud`` module the same way). A function
that writes commits, unless it says the caller does (those are parts of a larger change the caller commits at
once).

The status path (:func:`job_row`, :func:`job_page`, last section) is different on purpose: a console or a script
polls it, so each read must cost about what a trivial route costs. Profiled (cProfile, in process), the ORM route
spent its ~4 ms on opening and closing an SQLite connection with its pragmas (~1.9 ms), the ORM's query building
and object loading (~1 ms) and FastAPI's three-level dependency chain. There a read takes a pooled connection,
runs the key lookup and the job query as one prebuilt Core statement (a left join), and the row is rendered by
the same :func:`.jobs_api.job_object` as an ORM row (a Core row has the ORM object's attribute names);
``tests/serve/test_hostile.py`` checks the two answers are equal in every job state. Nothing is cached between
requests: a revoked key or a finished job shows on the very next read.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import JsonValue
from sqlalchemy import Engine, Row, Select, bindparam, false, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .db import ApiKey, EventRow, FileRow, JobRow, new_id, now
from .errors import ApiError
from .keys import KEY_PREFIX, hash_key
from .schemas import EventLevel, EventType, FilePurpose, JobStatus

Listed = TypeVar("Listed", FileRow, EventRow, JobRow)
#: a job that may still read its files
ACTIVE: tuple[JobStatus, ...] = ("validating_files", "queued", "running")


# ---- keys -------------------------------------------------------------------------------------------------------
def create_key(db: Session, name: str) -> tuple[ApiKey, str]:
    """Create a key named ``name``; returns the row and the key (the only time the key exists in clear)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), name=name, key_hash=hash_key(key), created_at=now(), revoked=False)
    db.add(row)
    db.commit()
    return row, key


def find_key(db: Session, key: str) -> ApiKey | None:
    """The live key row for ``key``, or None (unknown or revoked)."""
    row = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    return row if row is not None and not row.revoked else None


def live_key(db: Session, key_id: str) -> ApiKey | None:
    """The key with id ``key_id`` unless it was revoked (a console session names its key by id)."""
    row = db.get(ApiKey, key_id)
    return row if row is not None and not row.revoked else None


def revoke_key(db: Session, key_id: str) -> bool:
    row = db.get(ApiKey, key_id)
    if row is None:
        return False
    row.revoked = True
    db.commit()
    return True


def list_keys(db: Session) -> list[ApiKey]:
    return list(db.scalars(select(ApiKey).order_by(ApiKey.created_at)))


# ---- pages ------------------------------------------------------------------------------------------------------
def _page(db: Session, model: type[Listed], query: Select[Listed], *, after: str | None, limit: int,
          order: str, max_limit: int) -> tuple[list[Listed], bool]:
    """One page of ``query`` (rows of ``model``, ordered by ``seq``): (rows, has_more). ``after`` must be in
    the same (owner-filtered) query: another key's id is not a cursor."""
    if not 1 <= limit <= max_limit:
        raise ApiError(400, f"limit must be between 1 and {max_limit}, got {limit}", param="limit",
                       code="invalid_limit")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order must be 'asc' or 'desc', got '{order}'", param="order", code="invalid_order")
    if after:
        cursor = db.scalar(query.where(model.id == after).with_only_columns(model.seq))
        if cursor is None:
            raise ApiError(400, f"after: no such object {after} in this list", param="after", code="invalid_cursor")
        query = query.where(model.seq < cursor if order == "desc" else model.seq > cursor)
    query = query.order_by(model.seq.desc() if order == "desc" else model.seq.asc()).limit(limit + 1)
    rows = list(db.scalars(query))
    return rows[:limit], len(rows) > limit


# ---- files ------------------------------------------------------------------------------------------------------
def add_file(db: Session, *, file_id: str, owner: str, filename: str, purpose: FilePurpose, size: int, rows: int,
             data_format: str, commit: bool = True) -> FileRow:
    row = FileRow(id=file_id, owner=owner, filename=filename, purpose=purpose, bytes=size, created_at=now(),
                  rows=rows, data_format=data_format)
    db.add(row)
    if commit:
        db.commit()
    return row


def owned_file(db: Session, owner: str, file_id: str) -> FileRow | None:
    return db.scalar(select(FileRow).where(FileRow.id == file_id, FileRow.owner == owner))


def file_page(db: Session, owner: str, *, purpose: str | None, after: str | None, limit: int,
              order: str) -> tuple[list[FileRow], bool]:
    query = select(FileRow).where(FileRow.owner == owner)
    if purpose:
        query = query.where(FileRow.purpose == purpose)
    return _page(db, FileRow, query, after=after, limit=limit, order=order, max_limit=10000)


def recent_files(db: Session, owner: str, n: int) -> Sequence[FileRow]:
    return db.scalars(select(FileRow).where(FileRow.owner == owner).order_by(FileRow.seq.desc()).limit(n)).all()


def job_using(db: Session, owner: str, file_id: str) -> str | None:
    """An unfinished job of ``owner`` that reads ``file_id`` (its id), or None."""
    uses = (JobRow.training_file == file_id) | (JobRow.validation_file == file_id)
    return db.scalar(select(JobRow.id).where(JobRow.owner == owner, JobRow.status.in_(ACTIVE), uses))


def delete_file(db: Session, row: FileRow) -> None:
    db.delete(row)
    db.commit()


# ---- jobs -------------------------------------------------------------------------------------------------------
def add_event(db: Session, job_id: str, message: str, *, level: EventLevel = "info",
              type_: EventType = "message", data: dict[str, JsonValue] | None = None,
              created_at: int | None = None) -> None:
    """Append an event (the caller commits)."""
    db.add(EventRow(id=new_id("ftevent"), job_id=job_id, created_at=created_at or now(), level=level,
                    message=message, type=type_, data=data))


def queue_job(db: Session, job: JobRow) -> JobRow:
    """Store a new job (validated by the caller) as ``queued``, with its first events."""
    db.add(job)
    db.flush()  # the job row first: events reference it
    add_event(db, job.id, f"Created fine-tuning job: {job.id}")
    add_event(db, job.id, "Validated the training file and the job spec")
    job.status = "queued"
    add_event(db, job.id, "Job queued")
    db.commit()
    return job


def job_by_id(db: Session, job_id: str) -> JobRow | None:
    """The job with public id ``job_id`` (the primary key is ``seq``)."""
    return db.scalar(select(JobRow).where(JobRow.id == job_id))


def owned_job(db: Session, owner: str, job_id: str) -> JobRow | None:
    return db.scalar(select(JobRow).where(JobRow.id == job_id, JobRow.owner == owner))


def succeeded_job(db: Session, owner: str, fine_tuned_model: str) -> JobRow | None:
    """``owner``'s succeeded job whose ``fine_tuned_model`` is that name (a model for the next job)."""
    return db.scalar(select(JobRow).where(JobRow.owner == owner, JobRow.fine_tuned_model == fine_tuned_model,
                                          JobRow.status == "succeeded"))


def recent_jobs(db: Session, owner: str, n: int) -> Sequence[JobRow]:
    return db.scalars(select(JobRow).where(JobRow.owner == owner).order_by(JobRow.seq.desc()).limit(n)).all()


def request_cancel(db: Session, job: JobRow) -> JobRow:
    """Cancel a job that has not started at once (a compare-and-set, so a job the scheduler just claimed is
    not cancelled behind its back); else mark it for the scheduler, which stops it after a checkpoint."""
    waiting: tuple[JobStatus, ...] = ("validating_files", "queued")
    if job.status in waiting and _changed(db.execute(
            update(JobRow).where(JobRow.id == job.id, JobRow.status.in_(waiting))
            .values(status="cancelled", cancel_requested=True, finished_at=now()))):
        add_event(db, job.id, "The job was cancelled before it started")
    else:
        job.cancel_requested = True
        add_event(db, job.id, "Cancellation requested; the job stops at the next step boundary after a checkpoint")
    db.commit()
    db.refresh(job)
    return job


def event_page(db: Session, job_id: str, *, after: str | None, limit: int) -> tuple[list[EventRow], bool]:
    return _page(db, EventRow, select(EventRow).where(EventRow.job_id == job_id), after=after, limit=limit,
                 order="desc", max_limit=1000)


def recent_events(db: Session, job_id: str, n: int) -> Sequence[EventRow]:
    return db.scalars(select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.seq.desc())
                      .limit(n)).all()


# ---- the scheduler --------------------------------------------------------------------------------------------
def _changed(result: object) -> bool:
    """Whether an UPDATE changed exactly one row (``rowcount`` is on the cursor result of a DML statement)."""
    return isinstance(result, CursorResult) and result.rowcount == 1


def next_queued(db: Session) -> JobRow | None:
    """The oldest queued job."""
    return db.scalar(select(JobRow).where(JobRow.status == "queued").order_by(JobRow.seq).limit(1))


def claim(db: Session, job_id: str, *, host: str, lease_until: int) -> bool:
    """Mark a queued job running on ``host`` (a compare-and-set on its status, committed): False when another
    scheduler took it first."""
    done = _changed(db.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                               .values(status="running", host=host, lease_until=lease_until)))
    db.commit()
    return done


def orphans(db: Session, running: Sequence[str], *, host: str, at: int) -> Sequence[JobRow]:
    """Jobs marked running that no process of this server runs: this host's, a host's that never started
    them, or any whose lease has lapsed (their server died), oldest first."""
    mine: ColumnElement[bool] = or_(JobRow.host == host, JobRow.host.is_(None), JobRow.lease_until < at)
    return db.scalars(select(JobRow).where(JobRow.status == "running", JobRow.id.not_in(list(running) or [""]),
                                           mine).order_by(JobRow.seq)).all()


def end_job(db: Session, job: JobRow, state: Literal["succeeded", "failed", "cancelled"], message: str, *,
            level: EventLevel = "info") -> None:
    """Record a job's end (``job.error`` / result fields are set by the caller) and commit."""
    job.status, job.finished_at, job.pid, job.lease_until = state, now(), None, None
    add_event(db, job.id, message, level=level)
    db.commit()


# ---- the status path (Core) -------------------------------------------------------------------------------
_JOBS = JobRow.__table__
_KEYS = ApiKey.__table__
# built once: building a statement costs more than running it; the caller's key and the job in one query (a
# left join, so "unknown key" (no row) and "no such job" (a row without a job) stay apart)
_JOB = (select(_KEYS.c.id.label("key_owner"), _JOBS)
        .select_from(_KEYS.outerjoin(_JOBS, (_JOBS.c.owner == _KEYS.c.id) & (_JOBS.c.id == bindparam("job_id"))))
        .where(_KEYS.c.key_hash == bindparam("key_hash"), _KEYS.c.revoked == false()))
_KEY = select(_KEYS.c.id).where(_KEYS.c.key_hash == bindparam("key_hash"), _KEYS.c.revoked == false())
_CURSOR = select(_JOBS.c.seq).where(_JOBS.c.id == bindparam("after"), _JOBS.c.owner == bindparam("owner"))
# a page of the key's jobs, found by the key's hash in the same query; an empty page asks _KEY which 401 it is
_PAGE = (select(_JOBS).join(_KEYS, _JOBS.c.owner == _KEYS.c.id)
         .where(_KEYS.c.key_hash == bindparam("key_hash"), _KEYS.c.revoked == false(),
                _JOBS.c.seq < bindparam("before"))
         .order_by(_JOBS.c.seq.desc()).limit(bindparam("n")))
NO_KEY = ("You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (create one with "
          "`hdpo-tune serve keys create NAME`).")
BAD_KEY = "Incorrect API key provided. Create a key with `hdpo-tune serve keys create NAME`."


def key_hash_of(authorization: str) -> str:
    """The sha256 of the key in ``Authorization: Bearer KEY``; 401 as :func:`.deps.caller` answers."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, NO_KEY, code="invalid_api_key")
    return hash_key(key.strip())


def job_row(engine: Engine, authorization: str, job_id: str) -> Row[Any] | None:
    """The caller's job ``job_id`` (None: no such job, or another key's); 401 for a bad key."""
    digest = key_hash_of(authorization)
    with engine.connect() as conn:
        row = conn.execute(_JOB, {"key_hash": digest, "job_id": job_id}).first()
    if row is None:
        raise ApiError(401, BAD_KEY, code="invalid_api_key")
    return row if row.id is not None else None


def job_page(engine: Engine, authorization: str, *, after: str | None, limit: int) -> tuple[list[Row[Any]], bool]:
    """One page of the caller's jobs, newest first: (rows, has_more). ``after`` must be one of the caller's."""
    if not 1 <= limit <= 100:
        raise ApiError(400, f"limit must be between 1 and 100, got {limit}", param="limit", code="invalid_limit")
    digest = key_hash_of(authorization)
    with engine.connect() as conn:
        before = 2**62
        if after:
            owner = conn.execute(_KEY, {"key_hash": digest}).scalar()
            cursor = None if owner is None else conn.execute(_CURSOR, {"after": after, "owner": owner}).scalar()
            if owner is not None and cursor is None:
                raise ApiError(400, f"after: no such object {after} in this list", param="after",
                               code="invalid_cursor")
            before = cursor if cursor is not None else before
        rows = list(conn.execute(_PAGE, {"key_hash": digest, "before": before, "n": limit + 1}))
        if not rows and conn.execute(_KEY, {"key_hash": digest}).scalar() is None:
            raise ApiError(401, BAD_KEY, code="invalid_api_key")
    return rows[:limit], len(rows) > limit

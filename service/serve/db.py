"""The service's state in SQLAlchemy: API keys (hashed), files, jobs and their events.

An SQLite file in the data folder by default (``hdpo-tune serve`` needs no other set-up); any SQLAlchemy URL
(``postgresql+psycopg://...``) for a shared database. Rows carry a public id (``file-...``, ``ftjob-...``) and
an integer ``seq`` that orders them, so cursor pagination (``after=ID``) is one indexed comparison.

The job row is the single source of truth for a job's state; the run folder holds what the pipeline writes.
``host``/``pid``/``lease_until`` say which server is running the job's process (see :mod:`.scheduler`).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

# The seq column: BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


def new_id(prefix: str) -> str:
    """A public object id like OpenAI's (``file-``/``ftjob-``/``ftevent-`` + 24 random hex digits)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    """Unix seconds, as every ``created_at`` of the API."""
    return int(time.time())


#: bumped whenever a table changes; a database of another version is refused, never half-read
SCHEMA_VERSION = "1"


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class ApiKey(Base):
    """An API key: only its sha256 is stored (the key is printed once by ``serve keys create``)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class FileRow(Base):
    """An uploaded (``fine-tune``) or generated (``fine-tune-results``) file, stored under DATA/files/."""

    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner: Mapped[str] = mapped_column(String(40), ForeignKey("api_keys.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(40))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    data_format: Mapped[str] = mapped_column(String(20), default="")


class JobRow(Base):
    """A fine-tuning job. ``request`` is what the client sent (OpenAI fields and the ``hdpo_tune`` extension,
    or the native spec); the job spec the process runs is ``DATA/runs/ID/job.yaml``."""

    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    owner: Mapped[str] = mapped_column(String(40), ForeignKey("api_keys.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    model: Mapped[str] = mapped_column(String(300))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400), nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_until: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    slot: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # progress read from the run folder, so a restarted server neither repeats nor loses events
    last_metrics_step: Mapped[int] = mapped_column(Integer, default=0)
    last_stage: Mapped[str] = mapped_column(String(60), default="")
    stages_reported: Mapped[list[str]] = mapped_column(JSON, default=list)


class EventRow(Base):
    """One ``fine_tuning.job.event``: a stage change, a training-metrics line or a state change."""

    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, index=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(10))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets WAL (readers never wait for the scheduler's writes) and a busy
    timeout, and may be used from the API's thread pool and the scheduler thread."""
    if url.startswith("sqlite"):
        # pooled: opening a connection, setting its pragmas and closing it cost ~2 ms of CPU, half of a status
        # read; a large overflow (connections beyond the pool are closed when returned) so a burst never waits
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8,
                               max_overflow=120, pool_timeout=30)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=40)
    Base.metadata.create_all(engine)
    _check_schema(engine)
    return engine


def _check_schema(engine: Engine) -> None:
    from hdpo_core.errors import InputError

    with session_factory(engine)() as session:
        row = session.get(Meta, "schema_version")
        if row is None:
            session.add(Meta(key="schema_version", value=SCHEMA_VERSION))
            session.commit()
        elif row.value != SCHEMA_VERSION:
            raise InputError(f"--db: the database has schema version {row.value}, this hdpo-tune serve needs "
                             f"{SCHEMA_VERSION}; use the hdpo-tune version that created it, or a new data folder "
                             "/ database")


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def add_event(session: Any, job_id: str, message: str, *, level: str = "info", type_: str = "message",
              data: dict[str, Any] | None = None, created_at: int | None = None) -> None:
    """Append an event (the caller commits)."""
    session.add(EventRow(id=new_id("ftevent"), job_id=job_id, created_at=created_at or now(), level=level,
                         message=message, type=type_, data=data))


def job_by_id(session: Any, job_id: str) -> JobRow | None:
    """The job with public id ``job_id`` (the primary key is ``seq``)."""
    from sqlalchemy import select

    return session.scalar(select(JobRow).where(JobRow.id == job_id))

"""The service's state in SQLAlchemy: API keys (hashed), files, jobs and their events.

An SQLite file in the data folder by default (``hdpo-tune serve`` needs no other set-up); any SQLAlchemy URL
(``postgresql+psycopg://...``) for a shared database. Rows carry a public id (``file-...``, ``ftjob-...``) and
an integer ``seq`` that orders them, so cursor pagination (``after=ID``) is one indexed comparison.

The job row is the single source of truth for a job's state; the run folder holds what the pipeline writes.
``host``/``pid``/``lease_until`` say which server is running the job's process (see :mod:`.scheduler`).
"""

from __future__ import annotations

import secrets
import sqlite3
import time

from pydantic import JsonValue
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
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .schemas import EventLevel, EventType, FilePurpose, JobStatus

# The seq column: BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


def new_id(prefix: str) -> str:
    """A public object id like OpenAI's (``file-``/``ftjob-``/``ftevent-`` + 24 random hex digits)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    """Unix seconds, as every ``created_at`` of the API."""
    return int(time.time())


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """``schema_version``: the guard of the releases before Alembic, which refuse any value but "1" (the
    migration to revision 0002 writes "2", so an older hdpo-tune never opens an upgraded database)."""

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
    purpose: Mapped[FilePurpose] = mapped_column(String(40))
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
    status: Mapped[JobStatus] = mapped_column(String(20), index=True)
    model: Mapped[str] = mapped_column(String(300))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    method: Mapped[dict[str, JsonValue]] = mapped_column(JSON)
    request: Mapped[dict[str, JsonValue]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(400), nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[dict[str, JsonValue] | None] = mapped_column(JSON, nullable=True)
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
    level: Mapped[EventLevel] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[EventType] = mapped_column(String(10))
    data: Mapped[dict[str, JsonValue] | None] = mapped_column(JSON, nullable=True)


def make_engine(url: str) -> Engine:
    """An engine for ``url``, its schema brought to this version's (:func:`.migrate.upgrade`). SQLite gets WAL
    (readers never wait for the scheduler's writes) and a busy timeout, and may be used from the API's thread
    pool and the scheduler thread."""
    from .migrate import upgrade

    if url.startswith("sqlite"):
        # pooled: opening a connection, setting its pragmas and closing it cost ~2 ms of CPU, half of a status
        # read; a large overflow (connections beyond the pool are closed when returned) so a burst never waits
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8,
                               max_overflow=120, pool_timeout=30)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=40)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


Sessions = sessionmaker[Session]


def session_factory(engine: Engine) -> Sessions:
    return sessionmaker(engine, expire_on_commit=False)

"""The status path: a job's state and the job list, read with two indexed SQLAlchemy Core queries.

A console or a script polls these routes, so each read must cost about what a trivial route costs. Profiled
(cProfile, in process), the ORM route spent its ~4 ms on opening and closing an SQLite connection with its
pragmas (~1.9 ms), the ORM's query building and object loading (~1 ms) and FastAPI's three-level dependency
chain; the run folder is never read on this path. Here a read takes a pooled connection, runs the key lookup
and the job query as one prebuilt Core statement (a left join) and renders the row with the same
:func:`.jobs_api.job_object` the ORM path uses (a Core row has the ORM object's attribute names), so both
answers are equal by construction; ``tests/serve/test_status_path.py`` checks it for every job state.
Nothing is cached between requests: a revoked key or a finished job shows on the very next read.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Row, bindparam, false, select

from .db import ApiKey, JobRow
from .errors import ApiError
from .keys import hash_key

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

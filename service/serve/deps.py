"""What every route needs: the server context (settings, database sessions) and the caller's API key.

The dependencies and the read routes are ``async`` although the database calls are not: a status read is a
sub-millisecond indexed query, and running it on the event loop saves the thread-pool hand-offs that
dominated a read's latency on a busy CPU (each sync dependency and route is one hop). Uploads and job
creation, which parse files and specs, stay sync and run in the thread pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from .config import ServeConfig
from .db import ApiKey, Sessions
from .errors import ApiError
from .store import find_key


@dataclass
class ServerContext:
    config: ServeConfig
    sessions: Sessions
    engine: Engine  # the status path (:func:`.store.job_row`) runs Core queries on it


def server(request: Request) -> ServerContext:
    """The context :func:`.app.create_app` put in the app's state."""
    ctx = request.app.state.ctx
    if not isinstance(ctx, ServerContext):
        raise TypeError("the app was not made by service.serve.app.create_app")
    return ctx


async def context(request: Request) -> ServerContext:
    return server(request)


async def db_session(ctx: Annotated[ServerContext, Depends(context)]) -> AsyncIterator[Session]:
    with ctx.sessions() as session:
        yield session


async def caller(request: Request, session: Annotated[Session, Depends(db_session, scope="function")]) -> ApiKey:
    """The key in ``Authorization: Bearer KEY``; 401 (OpenAI's ``invalid_api_key``) when missing or unknown.
    The key is never echoed back, not even masked."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (create one "
                       "with `hdpo-tune serve keys create NAME`).", code="invalid_api_key")
    row = find_key(session, key.strip())
    if row is None:
        raise ApiError(401, "Incorrect API key provided. Create a key with `hdpo-tune serve keys create NAME`.",
                       code="invalid_api_key")
    return row


Ctx = Annotated[ServerContext, Depends(context)]
# scope="function": the session is closed as soon as the route returns, not after the response is sent; with
# the default the connections of every response still being sent stay checked out, and a burst of reads can
# exhaust the pool while the event loop waits for it
Db = Annotated[Session, Depends(db_session, scope="function")]
Caller = Annotated[ApiKey, Depends(caller, scope="function")]

"""The FastAPI application: OpenAI-compatible routes under ``/v1``, the scheduler started with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from .config import ServeConfig, visible_gpus
from .db import make_engine, session_factory
from .deps import ServerContext
from .errors import ApiError, install_error_handlers
from .executor import Executor, LocalExecutor
from .scheduler import Scheduler
from .schemas import Health

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON_BODY_LIMIT = 4 * 1024 * 1024


class BodyLimit:
    """Refuse request bodies over the limit (413) before they are stored: by Content-Length when sent, else
    (a chunked body) the moment the bytes received cross the limit: the 413 is sent then, the connection is
    closed, and the route sees a disconnect (whatever it answers is dropped). Uploads get
    ``max_upload_bytes``, every other route 4 MiB."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], upload_limit: int) -> None:
        self.app, self.upload_limit = app, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"].rstrip("/").endswith("/files") else JSON_BODY_LIMIT
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._reject(send, limit)
            return
        seen, started, rejected = 0, False, False

        async def counted() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                rejected = True
                if not started:
                    await self._reject(send, limit)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 was the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not rejected:  # after a 413 the route's reaction to the disconnect is of no interest
                raise

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        import json

        body = json.dumps(ApiError(413, f"Request body too large: the limit is {limit // (1024 * 1024)} MiB "
                                   "(hdpo-tune serve --max-upload-mb)", code="request_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def make_executor(config: ServeConfig) -> tuple[Executor, str]:
    """The executor ``config`` asks for, with one line describing it (the Ray one connects and checks the
    cluster first: a bad set-up is an InputError, one line at start)."""
    if config.executor == "ray":
        from .ray_connect import ray_executor

        return ray_executor(config.ray_address, config.data_dir, dict(config.ray_resources))
    return LocalExecutor(visible_gpus()), "local processes"


def create_app(config: ServeConfig, executor: Executor | None = None) -> FastAPI:
    from . import files_api, jobs_api, native_api

    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.files_dir.mkdir(exist_ok=True)
    files_api.remove_stale_uploads(config.files_dir)
    config.runs_dir.mkdir(exist_ok=True)
    engine = make_engine(config.database_url)
    sessions = session_factory(engine)
    summary = "given"
    if executor is None:
        executor, summary = make_executor(config)
    scheduler = Scheduler(config, sessions, executor)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()
        engine.dispose()

    # JSONResponse named (not left as the default) keeps FastAPI off its pydantic-to-bytes fast path: responses
    # are rendered by json.dumps as before the routes declared models, so they stay byte for byte the same
    # (pydantic would write 1e-05 as 0.00001)
    app = FastAPI(title="hdpo-tune serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  default_response_class=JSONResponse)
    app.state.ctx = ServerContext(config=config, sessions=sessions, engine=engine)
    app.state.scheduler = scheduler
    app.state.executor_summary = summary
    install_error_handlers(app)
    for router in (files_api.router, jobs_api.router, native_api.router):
        app.include_router(router, prefix="/v1")

    from .console import install as install_console

    install_console(app, data_dir=config.data_dir)  # the web console at / (docs/console.md)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(ok=True, workers=scheduler.workers, running=len(scheduler.running))

    app.add_middleware(BodyLimit, upload_limit=config.max_upload_bytes)
    return app

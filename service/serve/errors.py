"""Errors shaped like OpenAI's: ``{"error": {"message", "type", "param", "code"}}`` with the matching status.

The official SDK turns these into ``BadRequestError`` (400), ``AuthenticationError`` (401),
``NotFoundError`` (404), ``ConflictError`` (409), ``UnprocessableEntityError`` (422) and so on, with
``.body`` holding the error object. Messages follow the project's rule: what, where, how to fix; never a
secret, never a server path.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("hdpo_tune.serve")


class ApiError(Exception):
    """An error response. ``extra`` adds fields to the error object (e.g. ``line`` of a bad row)."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}


def not_found(kind: str, object_id: str) -> ApiError:
    """404 for a missing object *and* for another key's object (the two are indistinguishable)."""
    return ApiError(404, f"No such {kind}: {object_id}", param="id", code="not_found")


def _json(err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    lines, first = [], None
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "body"
        first = first or where
        lines.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(lines) or "invalid request", first


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _json(ApiError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _json(ApiError(404, f"Unknown request URL: {request.method} {request.url.path}",
                                  code="unknown_url"))
        return _json(ApiError(exc.status_code, str(exc.detail), code="http_error"))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", type(exc).__name__)
        return _json(ApiError(500, "The server had an error while processing your request.", type_="server_error",
                              code="internal_error"))

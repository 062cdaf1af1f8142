"""The console: web pages to watch, compare and start H-DPO jobs, served by ``hdpo-tune serve`` at ``/`` (the
API stays at ``/v1``) and, read-only over local run folders, by ``hdpo-tune ui``.

Plain HTML and JavaScript modules (no build step) with uPlot, vendored in ``static/vendor`` (MIT), for the
charts. Every page is static: data comes from ``/console/api`` and is put in the page as text, never as markup,
and the Content-Security-Policy below forbids inline and foreign scripts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .headers import SecurityHeaders
from .local import Catalogue
from .routes import STATIC, router
from .session import load_secret


def install(app: FastAPI, *, data_dir: Path | None = None, catalogue: Catalogue | None = None) -> None:
    """Add the console to ``app``: under ``hdpo-tune serve`` (``data_dir`` holds the cookie secret) or over the
    run folders of ``catalogue`` (``hdpo-tune ui``)."""
    app.state.console_catalogue = catalogue
    app.state.console_secret = load_secret(data_dir) if data_dir is not None else b""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(SecurityHeaders)

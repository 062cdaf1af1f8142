"""``hdpo-tune ui RUN_OR_FOLDER...``: the console over local run folders and sweeps, read-only, on 127.0.0.1.

No database, no keys: whoever can reach the port sees the runs, so the server listens on the loopback only and
answers only requests whose ``Host`` is the loopback (a web page cannot reach it by DNS rebinding)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware

from hdpo_core.errors import InputError

from ..errors import install_error_handlers
from . import install
from .local import Catalogue, is_run, is_sweep

HOST = "127.0.0.1"


def create_ui_app(paths: list[Path]) -> FastAPI:
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise InputError(f"ui: {missing[0]} is not a folder; give run folders, sweep folders or folders holding them")
    catalogue = Catalogue(tuple(paths))
    runs, _sweeps = catalogue.scan()
    if not runs and not any(is_run(p) or is_sweep(p) for p in paths):
        raise InputError(f"ui: no run folder found in {', '.join(map(str, paths))} (a run folder has status.json or "
                         "job.resolved.yaml); give a run's output.dir")
    app = FastAPI(title="hdpo-tune ui", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    install(app, catalogue=catalogue)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"])
    return app


def run_ui(paths: list[Path], port: int) -> None:
    import sys

    import uvicorn

    app = create_ui_app(paths)
    print(f"hdpo-tune ui: http://{HOST}:{port}/  (read-only; Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning")

"""``hdpo-tune serve`` (start the server) and ``hdpo-tune serve keys create|list|revoke``.

Only typer is imported here; FastAPI, uvicorn and SQLAlchemy load when a command runs, so the other
commands of ``hdpo-tune`` do not pay for them.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # the server stack loads only when a serve command runs
    from .config import ServeConfig
    from .db import Sessions

serve_app = typer.Typer(help="Fine-tuning jobs service speaking OpenAI's fine-tuning API (files, fine_tuning.jobs).",
                        invoke_without_command=True, no_args_is_help=False)
keys_app = typer.Typer(help="API keys: create (printed once), list, revoke.", no_args_is_help=True)
serve_app.add_typer(keys_app, name="keys")

DataOpt = Annotated[Path, typer.Option("--data", envvar="HDPO_SERVE_DATA",
                                       help="Data folder: database, uploaded files, one run folder per job.")]
DbOpt = Annotated[str | None, typer.Option("--db", envvar="HDPO_SERVE_DB", show_default=False,
                                           help="SQLAlchemy URL (e.g. postgresql+psycopg://...); default: "
                                           "sqlite in the data folder. Prefer the env var: a URL may hold a "
                                           "password.")]
DEFAULT_DATA = Path("hdpo-serve")


class ExecutorName(enum.StrEnum):
    """Where job processes run (``--executor``)."""

    local = "local"
    ray = "ray"


def _sessions(data: Path, db: str | None) -> Sessions:
    """The key commands' database (upgraded as the server would); a database it cannot use is one line."""
    from service.cli_guard import guarded

    from .config import ServeConfig
    from .db import make_engine, session_factory

    cfg = ServeConfig(data_dir=data.resolve(), db_url=db)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    return session_factory(guarded(lambda: make_engine(cfg.database_url)))


def describe_db(url: str) -> str:
    """The database without credentials: ``postgresql+psycopg://host:5432/name`` or ``sqlite (FILE)``."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.drivername.startswith("sqlite"):
        return f"sqlite ({u.database})"
    return u.render_as_string(hide_password=True).replace(f"{u.username}:***@", "") if u.username else str(u)


@serve_app.callback()
def serve(
    ctx: typer.Context,
    data: DataOpt = DEFAULT_DATA,
    db: DbOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.")] = 8000,
    model_root: Annotated[list[Path] | None, typer.Option("--model-root", help="Folder whose sub-folders are "
                          "models jobs may start from, by folder name (repeatable).")] = None,
    no_hub: Annotated[bool, typer.Option("--no-hub", help="Refuse Hub model/dataset ids (local models only).")] = False,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", min=1, help="Largest accepted upload.")] = 512,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Jobs run at once (default: number of "
                       "GPUs, or 1 without a GPU; 0 = accept jobs, run none).")] = None,
    limit: Annotated[list[str] | None, typer.Option("--limit", help="A per-job limit NAME=N (repeatable), e.g. "
                     "max_steps=50000; names and defaults in docs/service.md.")] = None,
    allow_unsandboxed_code: Annotated[bool, typer.Option(
        "--allow-unsandboxed-code", help="Let every job's code verifier run without the bubblewrap sandbox where "
        "it cannot start (only for code you trust; a request can never ask for it).")] = False,
    report_to: Annotated[list[str] | None, typer.Option("--report-to", help="Experiment tracker every job logs "
                         "to: mlflow, wandb or trackio (repeatable; a request cannot set tracking).")] = None,
    mlflow_tracking_uri: Annotated[str | None, typer.Option("--mlflow-tracking-uri", help="MLflow tracking URI "
                                   "for --report-to mlflow.")] = None,
    executor: Annotated[ExecutorName, typer.Option("--executor", envvar="HDPO_SERVE_EXECUTOR", help="Where job processes run: local (this machine) or ray (a Ray cluster; needs the ray "
        "extra of hdpo-tune; docs/service.md).")] = ExecutorName.local,
    ray_address: Annotated[str | None, typer.Option("--ray-address", envvar="HDPO_SERVE_RAY_ADDRESS",
                           show_default=False, help="The Ray cluster for --executor ray, as ray.init takes it "
                           "(e.g. head-svc:6379); default: Ray's usual lookup (RAY_ADDRESS, a cluster started "
                           "on this machine).")] = None,
    ray_resources: Annotated[list[str] | None, typer.Option("--ray-resources", help="What each job process asks "
                             "Ray for, NAME=AMOUNT (repeatable): CPU=4, GPU=1, memory=16e9 (bytes), a custom "
                             "resource; default CPU=1, plus GPU=1 when the cluster has GPUs.")] = None,
) -> None:
    """Start the server (http://HOST:PORT/v1). Create a key first: `hdpo-tune serve keys create NAME`."""
    if ctx.invoked_subcommand is not None:
        return
    from service.cli_guard import guarded

    def start() -> None:
        from .config import ServeConfig
        from .limits import parse_limits

        if report_to:  # checked here, not at every job's creation
            from pydantic import ValidationError

            from hdpo_core.errors import InputError
            from service.spec.tracking import TrackingSpec

            try:
                TrackingSpec.model_validate({"report_to": report_to, "mlflow_tracking_uri": mlflow_tracking_uri})
            except ValidationError as exc:
                raise InputError(f"--report-to / --mlflow-tracking-uri: {exc.errors()[0]['msg']}") from None

        from .ray_connect import parse_resources

        if executor != ExecutorName.ray and (ray_address or ray_resources):
            from hdpo_core.errors import InputError

            raise InputError("--ray-address/--ray-resources: only with --executor ray")
        _run(ServeConfig(data_dir=data.resolve(), db_url=db, executor=executor.value, ray_address=ray_address,
                         ray_resources=parse_resources(ray_resources or []),
                         model_roots=tuple(p.resolve() for p in model_root or ()), allow_hub=not no_hub,
                         max_upload_bytes=max_upload_mb * 1024 * 1024, workers=workers,
                         limits=parse_limits(limit or []), allow_unsandboxed_code=allow_unsandboxed_code,
                         report_to=tuple(report_to or ()), mlflow_tracking_uri=mlflow_tracking_uri), host, port)

    guarded(start)


def _run(config: ServeConfig, host: str, port: int) -> None:
    import fcntl

    import uvicorn

    from hdpo_core.errors import InputError

    from .app import create_app

    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(config.data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"--data: another `hdpo-tune serve` is using {config.data_dir}; stop it or pick "
                         "another data folder") from None
    for root in config.model_roots:
        if not root.is_dir():
            raise InputError(f"--model-root: {root} is not a folder")
    app = create_app(config)
    typer.echo(f"hdpo-tune serve: http://{host}:{port}/v1  data {config.data_dir}  database "
               f"{describe_db(config.database_url)}  workers {app.state.scheduler.workers}  jobs on "
               f"{app.state.executor_summary}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="Who the key is for (shown in `keys list`).")],
                data: DataOpt = DEFAULT_DATA, db: DbOpt = None) -> None:
    """Create an API key and print it (the only time it is shown; only its sha256 is stored)."""
    from .store import create_key

    with _sessions(data, db)() as session:
        row, key = create_key(session, name)
    typer.echo(f"created {row.id} for {name}; the key (shown once, keep it secret):", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(data: DataOpt = DEFAULT_DATA, db: DbOpt = None) -> None:
    """List keys: id, name, created, revoked (never the key)."""
    import datetime as dt

    from .store import list_keys

    with _sessions(data, db)() as session:
        for row in list_keys(session):
            when = dt.datetime.fromtimestamp(row.created_at, dt.UTC).isoformat(timespec="seconds")
            typer.echo(f"{row.id}\t{row.name}\t{when}\t{'revoked' if row.revoked else 'active'}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="Key id from `keys list`.")],
                data: DataOpt = DEFAULT_DATA, db: DbOpt = None) -> None:
    """Revoke a key: requests with it get 401 from then on (its files and jobs stay)."""
    from .store import revoke_key

    with _sessions(data, db)() as session:
        if not revoke_key(session, key_id):
            typer.echo(f"error: no key {key_id}; see `hdpo-tune serve keys list`", err=True)
            raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")

"""The `hdpo-tune` command line: a thin Typer layer over service.pipeline.

Each command parses its arguments, calls one pipeline function, and maps the domain error
(:class:`hdpo_core.errors.HdpoError`) to one line on stderr and an exit code: 2 bad input, 1 failure while
running, 130 interrupted. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from hdpo_core import __version__
from hdpo_core.errors import HdpoError

app = typer.Typer(
    name="hdpo-tune",
    help="Align causal LMs with H-DPO (entropy-controllable DPO): train, evaluate, merge, export ONNX, push.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hdpo-tune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    _STATE["debug"] = debug


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn a domain error into one stderr line and its exit code (traceback only with --debug)."""
    try:
        return fn()
    except HdpoError as exc:
        if _STATE["debug"]:
            raise
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=130) from None


def _with_default_command(argv: list[str]) -> list[str]:
    """`hdpo-tune job.yaml` (the container's entrypoint form) means `hdpo-tune run job.yaml`."""
    args = list(argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is not None and args[first].endswith((".yaml", ".yml")):
        args.insert(first, "run")
    return args


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    args = _with_default_command(sys.argv[1:] if argv is None else argv)
    return app(args=args, prog_name="hdpo-tune")

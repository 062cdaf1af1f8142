"""The CLI's one error edge: a domain error becomes one stderr line and its exit code.

Its own module so that sub-applications (``hdpo-tune serve``) use it without importing ``service.cli``, which
imports them (the import graph stays free of cycles).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from hdpo_core.errors import HdpoError

T = TypeVar("T")
STATE = {"debug": False}  # set by the root callback from --debug


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn a domain error into one stderr line and its exit code. ``--debug`` adds the
    traceback before that line and keeps the exit code (2 stays 2: a script can rely on it either way)."""
    try:
        return fn()
    except HdpoError as exc:
        if STATE["debug"]:
            import traceback

            traceback.print_exc()
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(code=exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(code=130) from None

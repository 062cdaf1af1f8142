"""The one domain error type of hdpo-tune.

Core code raises :class:`HdpoError` (or a subclass that only fixes the exit code); only the CLI turns it
into an exit code and a single line on stderr. Messages say what is wrong, where (spec field path or
``file:row``), and how to fix it. They must never contain secrets.
"""

from __future__ import annotations


class HdpoError(Exception):
    """A failure the user can act on. ``exit_code`` 2 = bad input, 1 = failure while running."""

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class InputError(HdpoError):
    """Bad spec, data, model folder or command-line argument (exit code 2)."""

    exit_code = 2


class RunError(HdpoError):
    """A failure while running a stage (exit code 1)."""

    exit_code = 1


class Interrupted(HdpoError):
    """Training stopped by SIGTERM/SIGINT after writing a checkpoint (exit code 130)."""

    exit_code = 130

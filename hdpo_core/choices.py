"""The engine's named choices, as types the job spec reuses (so a spec ``Literal`` and the engine's option can
never disagree). Torch-free on purpose: the spec imports this without paying for the engine."""
from typing import Literal

from .errors import InputError

Scheduler = Literal["cosine", "linear", "constant"]
OnNonfinite = Literal["skip", "stop"]


def batch_split_problem(batch_size: int, micro_batch_size: int, *, processes: int) -> str | None:
    """The one rule for splitting a global batch: ``batch_size`` must be a multiple of ``micro_batch_size x
    processes`` (every process runs whole micro-batches of the same size). Returns the problem line or None.
    The spec checks it with one process; the trainer again once the number of processes is known."""
    if batch_size % (micro_batch_size * processes) == 0:
        return None
    if processes == 1:
        return (f"train.batch_size ({batch_size}) must be divisible by train.micro_batch_size ({micro_batch_size}); "
                f"choose a micro_batch_size that divides batch_size (e.g. {_largest_divisor(batch_size, micro_batch_size)})")
    return (f"train.batch_size ({batch_size}) must be divisible by train.micro_batch_size ({micro_batch_size}) x "
            f"processes ({processes}); adjust one of them")


def check_batch_split(batch_size: int, micro_batch_size: int, *, processes: int) -> None:
    """Raise :class:`InputError` (bad input, exit 2) when :func:`batch_split_problem` finds one: the check the
    train stage makes before loading the model and the trainer makes for every caller."""
    problem = batch_split_problem(batch_size, micro_batch_size, processes=processes)
    if problem is not None:
        raise InputError(problem)


def _largest_divisor(n: int, below: int) -> int:
    return max(d for d in range(1, min(n, below) + 1) if n % d == 0)

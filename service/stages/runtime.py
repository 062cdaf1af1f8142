"""Process and runtime facts shared by the pipeline, the stages and the launcher: is this process on the CPU,
is it the main one, wait for the others.

Kept apart from :mod:`service.launch` (which builds the ``accelerate launch`` command line) so that running a
job never imports the launcher, and the launcher never imports the CLI: the import graph stays a tree
(``tests/service/test_structure.py``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState


def wants_cpu() -> bool:
    """Whether this process must run accelerate on the CPU: ``ACCELERATE_USE_CPU`` is set, or it was started by
    a distributed launcher (``WORLD_SIZE`` > 1) on a machine without an accelerator. Without the second rule
    accelerate 1.x gives every torchrun process on a CPU-only machine ``DistributedType.NO``: each one believes
    it is the only (main) process, and they all write the run folder."""
    flag = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if flag:
        return True
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    import torch

    has_accel = getattr(torch, "accelerator", None)
    available = has_accel.is_available() if has_accel is not None else torch.cuda.is_available()
    return not available


def launched() -> bool:
    """Whether a distributed launcher started this process (``WORLD_SIZE`` > 1). A single process needs no
    accelerate state to know it is the main one, which keeps accelerate (and torch) out of the start-up of
    the commands that do not train."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def process_state() -> PartialState:
    """accelerate's ``PartialState`` for this process, created with the right ``cpu`` flag (see
    :func:`wants_cpu`); the pipeline and the train stage both go through here, so they agree."""
    from accelerate import PartialState

    return PartialState(cpu=wants_cpu())


def is_main_process() -> bool:
    """True in a single process, else whether this rank is the main one."""
    return not launched() or bool(process_state().is_main_process)


def wait_for_everyone() -> None:
    """Barrier across launched processes (no-op in a single process)."""
    if launched():
        process_state().wait_for_everyone()


def import_deepspeed_only_when_used() -> None:
    """Keep ``deepspeed`` out of runs that do not use it.

    ``Accelerator.unwrap_model`` (called once per training run) imports ``deepspeed`` whenever it is
    installed, only to add ``DeepSpeedEngine`` to an ``isinstance`` check; deepspeed in turn imports its
    autotuner and mlflow. Measured here that is the largest single import of a short CPU job (more than
    transformers). An object can only be a ``DeepSpeedEngine`` if deepspeed was imported, so answering
    "available" only once it is in ``sys.modules`` gives the same unwrapping without the import. A DeepSpeed
    run imports deepspeed when accelerate prepares the engine, so it is unaffected.
    """
    import sys

    from accelerate.utils import other

    original = other.is_deepspeed_available
    if getattr(original, "_hdpo_deferred", False):
        return

    def deepspeed_if_imported() -> bool:
        return "deepspeed" in sys.modules and bool(original())

    deepspeed_if_imported._hdpo_deferred = True  # type: ignore[attr-defined]
    other.is_deepspeed_available = deepspeed_if_imported

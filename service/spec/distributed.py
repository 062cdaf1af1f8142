"""The ``distributed:`` section of the job spec: how `hdpo-tune launch` starts the job on several processes.

`hdpo-tune run` itself never reads it (under ``accelerate launch``/``torchrun`` the launcher already decided);
:mod:`service.launch` turns it into an ``accelerate launch`` command line. ``mixed_precision`` stays in
``train:`` because it changes the numbers, not the launch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.spec.base import StrictModel


class DistributedSpec(StrictModel):
    """Processes and the accelerate backend `hdpo-tune launch` uses."""


    backend: Literal["none", "ddp", "fsdp", "deepspeed"] = Field(
        "none", description="none: one process (or plain DDP when num_processes > 1); ddp: data parallel; fsdp: "
        "FSDP2 sharding; deepspeed: DeepSpeed ZeRO-3 (LoRA only; needs deepspeed installed).")
    num_processes: int = Field(1, gt=0, description="Processes in total over all machines (usually GPUs); "
                               "`hdpo-tune launch --num-processes` overrides it.")
    num_machines: int = Field(1, gt=0, description="Machines; above 1 each runs the launch with its own "
                              "--machine_rank (see docs/deploy.md).")
    accelerate_config: str | None = Field(
        None, min_length=1, description="An accelerate config file (relative to the job file) used instead of "
        "the one for the backend from deploy/accelerate/.")

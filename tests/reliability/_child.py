"""The process the SIGKILL test kills: ``hdpo-tune run JOB`` forked from a warm forkserver.

Importing torch, transformers and peft takes many seconds on a busy CI machine; the forkserver imports this
module once and forks every child from it, so each of the many killed runs starts in about a second. The
child is still a separate process running the real CLI entry point, killed with a real SIGKILL.
"""

from __future__ import annotations

import os
import sys
import time

import accelerate  # noqa: F401  (preloaded for the forks)
import peft  # noqa: F401
import torch  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401

import hdpo_core.trainer  # noqa: F401
import service.stages.pipeline  # noqa: F401
import service.stages.train  # noqa: F401
from service.cli import main


def run_job(job: str, log: str, fsync_delay: float) -> None:
    """Run the job with stdout/stderr to ``log``. ``fsync_delay`` (seconds) is added after every fsync: it
    stretches each checkpoint write (several fsyncs) so a kill lands inside one often, without touching the
    production code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    if fsync_delay:
        real_fsync = os.fsync

        def slow_fsync(f: int) -> None:
            real_fsync(f)
            time.sleep(fsync_delay)

        os.fsync = slow_fsync
    try:
        main(["run", job])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()

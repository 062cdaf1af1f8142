"""`hdpo-tune launch job.yaml`: start `hdpo-tune run job.yaml` on several processes through ``accelerate launch``.

The launch is only a convenience over the engines that already exist: it builds the ``accelerate launch``
command line from the job's ``distributed:`` section (the accelerate config from ``deploy/accelerate/`` that
matches the backend, or the user's own), prints it, and replaces itself with it (``os.execv``, so signals from
Kubernetes or a shell reach the launcher directly). Everything it does can be typed by hand; docs/deploy.md
shows the same commands.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hdpo_core.errors import InputError
from hdpo_core.inputs import check_file

#: deploy/accelerate/ file per backend (multi-node FSDP has its own file).
CONFIG_FILES = {"ddp": "ddp.yaml", "fsdp": "fsdp2.yaml", "deepspeed": "zero3.yaml"}
MULTI_NODE_FSDP = "multi_node.yaml"


def config_dirs() -> list[Path]:
    """Where the ready accelerate configs live: ``$HDPO_ACCELERATE_CONFIGS``, the source tree, the image."""
    dirs = [Path(os.environ["HDPO_ACCELERATE_CONFIGS"])] if os.environ.get("HDPO_ACCELERATE_CONFIGS") else []
    return [*dirs, Path(__file__).resolve().parents[1] / "deploy" / "accelerate", Path("/opt/hdpo/accelerate")]


def default_config(backend: str, num_machines: int) -> Path:
    name = MULTI_NODE_FSDP if backend == "fsdp" and num_machines > 1 else CONFIG_FILES[backend]
    for folder in config_dirs():
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"distributed.backend: {backend}: the accelerate config {name} was not found in "
                     f"{', '.join(str(d) for d in config_dirs())}; set distributed.accelerate_config or pass "
                     "--config-file")


def run_target() -> list[str]:
    """How the launcher starts one process: the `hdpo-tune` script next to this Python, else this module."""
    here = Path(sys.executable).parent / "hdpo-tune"
    exe = str(here) if here.is_file() else shutil.which("hdpo-tune")
    return [exe] if exe else [sys.executable, "-m", "service.cli"]


def build_command(job: Path, *, num_processes: int | None = None, config_file: Path | None = None,
                  cpu: bool = False) -> list[str]:
    """The ``accelerate launch`` argv for ``job`` (raises :class:`InputError` for a bad spec or combination).

    Precedence: ``--config-file`` > ``distributed.accelerate_config`` > the backend's file in
    deploy/accelerate/; ``--num-processes`` > ``distributed.num_processes``. ``cpu`` runs DDP over gloo on the
    CPU (FSDP2 and ZeRO-3 need GPUs). ``--mixed_precision`` comes from ``train.mixed_precision`` so the
    launcher and the Accelerator agree.
    """
    from service.spec.job import load_spec

    spec = load_spec(job)
    dist = spec.distributed
    n = num_processes if num_processes is not None else dist.num_processes
    if n < 1:
        raise InputError(f"--num-processes must be at least 1 (got {n})")
    backend = dist.backend if dist.backend != "none" or n == 1 else "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cpu:
        if backend in ("fsdp", "deepspeed"):
            raise InputError(f"distributed.backend: {backend} needs GPUs; --cpu runs only none/ddp (gloo)")
        if config_file is not None or dist.accelerate_config:
            raise InputError("--cpu builds its own launch (gloo DDP); drop --config-file/distributed.accelerate_config")
        # `accelerate launch --cpu` starts ONE process whatever --num_processes says (its multi-CPU path needs
        # mpirun); the torchrun path (--multi_gpu) with ACCELERATE_USE_CPU=1 gives N processes over gloo.
        cmd += ["--multi_gpu" if n > 1 else "--cpu", "--num_processes", str(n), "--num_machines", "1"]
    else:
        config = config_file or (Path(dist.accelerate_config) if dist.accelerate_config else None)
        if config is None and backend != "none":
            config = default_config(backend, dist.num_machines)
        if config is not None:
            check_file(config, "accelerate config", max_bytes=1 << 20, fix="an accelerate config is a few lines",
                       missing="fix distributed.accelerate_config or --config-file")
        if config is not None:
            cmd += ["--config_file", str(config)]
        cmd += ["--num_processes", str(n), "--num_machines", str(dist.num_machines)]
    cmd += ["--mixed_precision", spec.train.mixed_precision, "--dynamo_backend", "no"]
    return [*cmd, "--no_python", *run_target(), "run", str(job)]


def launch_env(cpu: bool) -> dict[str, str]:
    """Environment additions for the launch (``ACCELERATE_USE_CPU=1`` under ``--cpu``)."""
    return {"ACCELERATE_USE_CPU": "1"} if cpu else {}


def launch(job: Path, *, num_processes: int | None = None, config_file: Path | None = None, cpu: bool = False,
           dry_run: bool = False, log: Callable[[str], None] = print,
           execve: Callable[[str, Sequence[str], dict[str, str]], object] = os.execve) -> list[str]:
    """Print the command and (unless ``dry_run``) replace this process with it; returns the argv."""
    import shlex

    cmd = build_command(job, num_processes=num_processes, config_file=config_file, cpu=cpu)
    extra = launch_env(cpu)
    log(" ".join([*(f"{k}={v}" for k, v in extra.items()), shlex.join(cmd)]))
    if not dry_run:
        sys.stdout.flush()
        sys.stderr.flush()
        execve(cmd[0], cmd, {**os.environ, **extra})
    return cmd

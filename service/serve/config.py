"""The server's settings: where its data lives, which models jobs may start from, limits and workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .limits import Limits

DEFAULT_MAX_UPLOAD_MB = 512
#: jobs the server hands to a Ray cluster at once by default (Ray queues those the cluster cannot hold yet)
DEFAULT_RAY_WORKERS = 8


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``hdpo-tune serve`` is started with.

    ``data_dir`` holds the SQLite database (unless ``db_url`` names another), uploaded files (``files/``) and
    one run folder per job (``runs/ftjob-.../``); a job can read and write nothing else. Models come from
    ``model_roots`` (a model is a folder name directly inside one of them), from a finished job of the same
    key (its ``fine_tuned_model``), or, with ``allow_hub``, from Hub ids (``org/name``). ``limits`` bound what
    one job may cost; ``allow_unsandboxed_code`` and the tracking settings apply to every job and cannot be set
    by a request (:mod:`.jobspec`). ``executor`` says where job processes run: ``local`` (this machine) or
    ``ray`` (a Ray cluster at ``ray_address``, each process asking for ``ray_resources``; :mod:`.ray_executor`).
    """

    data_dir: Path
    db_url: str | None = None
    model_roots: tuple[Path, ...] = ()
    allow_hub: bool = True
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    workers: int | None = None
    poll_interval_s: float = 0.5
    lease_s: int = 60
    host_id: str = field(default_factory=socket.gethostname)
    limits: Limits = field(default_factory=Limits)
    # settings that weaken isolation or send data out of the data folder: the administrator's, never a caller's
    allow_unsandboxed_code: bool = False
    report_to: tuple[str, ...] = ()
    mlflow_tracking_uri: str | None = None
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_resources: tuple[tuple[str, float], ...] = ()

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'serve.db'}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    def public(self, text: str) -> str:
        """``text`` (an error, an event) with the server's paths replaced: the data folder shows as DATA, a
        model root as MODELS."""
        for path, name in [(self.data_dir, "DATA"), *((root, "MODELS") for root in self.model_roots)]:
            text = text.replace(str(path.resolve()), name).replace(str(path), name)
        return text

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return DEFAULT_RAY_WORKERS if self.executor == "ray" else default_workers()


def visible_gpus() -> list[str]:
    """The GPU ids jobs may use: ``CUDA_VISIBLE_DEVICES`` if set, else those ``nvidia-smi -L`` lists (counted
    without importing torch, so the API process stays small); empty without a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(count)]


def default_workers() -> int:
    """One job per GPU (each job process sees its own device through CUDA_VISIBLE_DEVICES), or 1 without."""
    return max(1, len(visible_gpus()))

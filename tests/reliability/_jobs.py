"""Shared helpers of the fault and security tests: one small LoRA job, its result, and file snapshots.

Every test here trains the same tiny job (LoRA r=4 on the tiny Llama of ``tests/fixtures``, 16 pairs, batch 4
in micro-batches of 2, CPU float32) so one uninterrupted run (the ``reference_final`` fixture) is the yardstick
for every interrupted, killed or failed-then-resumed run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from service.cli import app

STEPS = 16
ADAPTER = "adapter_model.safetensors"


def write_job(folder: Path, model: Path, pairs: Path, *, steps: int = STEPS, out: str = "run",
              name: str = "job.yaml", extra: dict[str, Any] | None = None, **train: Any) -> Path:
    """Write the standard job into ``folder/name`` (output.dir relative to the job file); returns its path."""
    spec: dict[str, Any] = {
        "model": {"name_or_path": str(model)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(pairs), "max_length": 64},
        "hdpo": {"alpha": 0.9, "beta": 0.1},
        "train": {"max_steps": steps, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 1e-3,
                  "seed": 0, "save_every": 100, **train},
        "output": {"dir": out},
    }
    for section, values in (extra or {}).items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / name
    job.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return job


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """``hdpo-tune ARGS`` in-process; stdout and stderr captured separately (``result.stderr``)."""
    return CliRunner(env=env).invoke(app, list(args))


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "final" / ADAPTER))


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def status(run: Path) -> dict[str, Any]:
    return json.loads((run / "status.json").read_text(encoding="utf-8"))


def metric_records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder``: relative path -> (size, mtime_ns) of files, (-1, -1) of folders
    (a folder's mtime changes when an entry is added to it, e.g. the run folder to the job's folder)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) if not p.is_dir() else (-1, -1)
            for p in folder.rglob("*")}


def changed_outside(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                    inside: str) -> list[str]:
    """Paths created, changed or removed between two snapshots that are not ``inside`` (a relative folder)."""
    diff = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return sorted(k for k in diff if k != inside and not k.startswith(inside + "/"))


def checkpoint_dirs(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []

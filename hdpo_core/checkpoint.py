"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` holding the trainable weights (adapter only under
LoRA), the optimizer and scheduler state, the torch RNG state and ``state.json``. It is written into a
temporary sibling folder, fsynced, and renamed into place, and ``state.json`` is written last inside it, so a
kill at any moment leaves either the previous complete checkpoint or the new complete one, never a torn one.
Older checkpoints beyond ``keep`` are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX = "step-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapter weights under LoRA, all weights otherwise), detached and contiguous."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(root: Path, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; returns its folder."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
    for name in ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"):
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    with open(tmp / "state.json", "w", encoding="utf-8") as fh:
        json.dump({"step": step, **state}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (those with ``state.json``), oldest first. Leftover temp folders are ignored."""
    if not root.exists():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(done, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_partial(root: Path) -> None:
    """Remove temp folders left by a kill during a write."""
    if root.exists():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from ``path``; returns ``state.json``."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} does not fit this model (unknown parameters, e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available() and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))

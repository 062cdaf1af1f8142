"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` holding the trainable weights (adapter only under
LoRA), the optimizer and scheduler state, the torch RNG state and ``state.json``. It is built like every other
artifact folder (:mod:`hdpo_core.artifact`): written into a temporary sibling, fsynced, its manifest written
last, and renamed into place, so a kill at any moment leaves either the previous complete checkpoint or the new
complete one, never a torn one. Older checkpoints beyond ``keep`` are renamed aside, then removed, only after
the new one is in place.

Integrity: the last file written into a checkpoint is the artifact manifest ``checksums.json`` (size and SHA-256
of every other file, ``state.json`` included; the same format and check as every artifact folder). A resume
takes the newest checkpoint that verifies (:func:`usable_checkpoint`): a truncated weights file, a broken
``state.json`` or a flipped byte in the optimizer state is named in one warning line and the previous
checkpoint is used instead; none usable is one error. Checkpoints written before
checksums existed are verified by loading every file (catches truncation, not silent corruption).

Distributed runs: only the main process writes. Under DDP every rank holds the same weights and optimizer
state, so rank 0's copy is the checkpoint. Under FSDP2 and DeepSpeed ZeRO-3 the trainable weights (and, under
FSDP2, the optimizer state) are gathered into full tensors first (collectives: every rank calls
:func:`gather_trainable_state` / :func:`gather_optimizer_state`), so a checkpoint loads at any world size.
The RNG state of every rank is gathered into ``rng.pt`` so each rank gets its own back on resume.
Weights are loaded *before* ``accelerator.prepare`` (so DDP broadcasts them, FSDP2 shards them and DeepSpeed
builds its fp32 master copy from them); the optimizer and scheduler after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import artifact
from .errors import InputError
from .io import note
from .layout import CHECKPOINT_OPTIMIZER as OPTIMIZER
from .layout import CHECKPOINT_RNG as RNG
from .layout import CHECKPOINT_SCHEDULER as SCHEDULER
from .layout import CHECKPOINT_STATE as STATE
from .layout import CHECKPOINT_TEMP as TEMP
from .layout import CHECKPOINT_WEIGHTS as WEIGHTS
from .layout import MANIFEST as MANIFEST
from .layout import checkpoint_name
from .layout import list_checkpoints as list_checkpoints

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.optim.lr_scheduler import LRScheduler

_REQUIRED = (WEIGHTS, SCHEDULER, RNG, STATE)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapter weights under LoRA, all weights otherwise), detached and contiguous."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def backend(accelerator: Accelerator) -> str:
    """``"fsdp"``, ``"deepspeed"`` or ``"ddp"`` (DDP, single process, CPU: state is replicated)."""
    kind = str(getattr(getattr(accelerator, "distributed_type", "NO"), "value", "NO")).upper()
    return {"FSDP": "fsdp", "DEEPSPEED": "deepspeed"}.get(kind, "ddp")


def rng_state() -> dict[str, Any]:
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def gather_trainable_state(accelerator: Accelerator, prepared: nn.Module, model: nn.Module,
                           prefix: str = "model.") -> dict[str, torch.Tensor] | None:
    """Trainable weights of ``model`` (the raw module inside ``prepared`` at ``prefix``) as full tensors on
    the main process; ``None`` on other ranks. A collective under FSDP/DeepSpeed: call it on every rank."""
    if backend(accelerator) == "ddp":
        return trainable_state(model) if accelerator.is_main_process else None
    full = accelerator.get_state_dict(prepared)  # FSDP2: full, on CPU; ZeRO-3: 16-bit consolidated
    if not accelerator.is_main_process:
        return None
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {n: full[prefix + n].detach().contiguous().clone() for n in names if prefix + n in full}


def gather_full_state(accelerator: Accelerator, prepared: nn.Module, prefix: str = "model."
                      ) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict (for ``save_pretrained``) under FSDP/DeepSpeed on the main process, else
    ``None`` (under DDP the unwrapped model is complete and saves itself). Collective under FSDP/DeepSpeed."""
    if backend(accelerator) == "ddp":
        return None
    full = accelerator.get_state_dict(prepared)
    if not accelerator.is_main_process:
        return None
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def gather_optimizer_state(accelerator: Accelerator, prepared: nn.Module, optimizer: torch.optim.Optimizer
                           ) -> dict[str, Any] | None:
    """Optimizer state to save: the local one under DDP, the full (gathered) one under FSDP2, ``None`` under
    DeepSpeed (its partitioned fp32 state is not gathered: a resume restarts the Adam moments)."""
    kind = backend(accelerator)
    if kind == "deepspeed":
        return None
    if kind == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        inner = getattr(optimizer, "optimizer", optimizer)
        return get_optimizer_state_dict(prepared, inner, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))
    return optimizer.state_dict()


def save_checkpoint(root: Path, step: int, *, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: LRScheduler, state: dict[str, Any],
                    keep: int,
                    weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None,
                    rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; returns its folder.

    Pass either ``model``/``optimizer`` (single process, DDP) or the gathered ``weights``/``optimizer_state``
    (FSDP/DeepSpeed; ``optimizer_state`` may be None). ``rng_states`` holds one entry per rank.
    """
    root.mkdir(parents=True, exist_ok=True)
    if root.is_symlink():  # never write (or prune) checkpoints through a link out of the run folder
        raise InputError(f"{root} is a symbolic link; checkpoints are written only into a real folder: remove "
                         "the link")
    final = root / checkpoint_name(step)
    tmp = root / f"{TEMP}{checkpoint_name(step)}-{os.getpid()}"
    artifact.remove_tree(tmp)
    tmp.mkdir()
    if weights is None:
        if model is None:
            raise ValueError("save_checkpoint needs model or weights")
        weights = trainable_state(model)
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    save_file(weights, str(tmp / WEIGHTS))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIMIZER)
    torch.save(scheduler.state_dict(), tmp / SCHEDULER)
    ranks = rng_states or [rng_state()]
    torch.save({**ranks[0], "ranks": ranks}, tmp / RNG)
    with open(tmp / STATE, "w", encoding="utf-8") as fh:
        json.dump({"step": step, **state}, fh, indent=1)
    # fsync, checksums.json last, the same step again (a rerun of the last) moved aside, renamed into place
    artifact.publish(tmp, final, required=_REQUIRED, aside=_aside_name(final))
    for old in list_checkpoints(root)[:-keep]:
        artifact.remove_tree(_move_aside(old))
    return final


_verified: dict[tuple[str, tuple[tuple[str, int, int, int], ...]], str | None] = {}


def verify_checkpoint(path: Path) -> str | None:
    """``None`` when the checkpoint at ``path`` is intact, else what is wrong (for a one-line message).

    Memoised on the files' identity (inode, size, mtime), so the service and the trainer checking the same
    checkpoint in one process hash it once.
    """
    try:
        key = (str(path), tuple(sorted((f.name, f.stat().st_ino, f.stat().st_size, f.stat().st_mtime_ns)
                                       for f in path.iterdir())))
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if key not in _verified:
        _verified[key] = _check_manifest(path) if (path / MANIFEST).exists() else _check_by_loading(path)
    return _verified[key]


def _check_manifest(path: Path) -> str | None:
    return artifact.verify(path, required=_REQUIRED) or _check_state(path)


def _check_state(path: Path) -> str | None:
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE} is unreadable"
    return None


def _check_by_loading(path: Path) -> str | None:
    """A checkpoint from before checksums: every file must load."""
    from safetensors import safe_open

    bad = _check_state(path)
    if bad:
        return bad
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as fh:
            for name in fh.keys():
                fh.get_tensor(name)
    except Exception:  # safetensors raises its own error types for a torn file
        return f"{WEIGHTS} does not load"
    for name in (OPTIMIZER, SCHEDULER, RNG):
        f = path / name
        if name == OPTIMIZER and not f.exists():
            continue
        try:
            torch.load(f, weights_only=True)
        except Exception:  # torch raises RuntimeError, EOFError, UnpicklingError... for a torn file
            return f"{name} does not load"
    return None


def usable_checkpoint(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root`` that verifies, and one line per newer damaged one skipped.

    Raises :class:`RunError` when checkpoints exist but none verifies (resuming from nothing would silently
    restart a run that the user thinks is resumable).
    """
    from .errors import RunError

    skipped: list[str] = []
    found = list_checkpoints(root)
    for path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, skipped
        skipped.append(f"warning: checkpoint {path} is damaged ({problem}); skipping it")
    if found:
        names = "; ".join(f"{p.name}: {verify_checkpoint(p)}" for p in reversed(found))
        raise RunError(f"no usable checkpoint under {root} ({names}); restore it from a backup, or move the "
                       "folder away (or use --force) to train from scratch")
    return None, skipped


def _aside_name(path: Path) -> Path:
    return path.with_name(f"{TEMP}del-{path.name}-{os.getpid()}")


def _move_aside(path: Path) -> Path:
    """Rename a checkpoint folder to a temp name (atomic) before deleting it; returns the new name.

    ``shutil.rmtree`` removes files one by one, so a kill in the middle of deleting ``step-N/`` in place could
    leave ``state.json`` next to a missing weights file: a folder that looks complete but cannot load. Under a
    temp name it is never taken for a checkpoint, and :func:`clean_partial` removes what a kill leaves.
    """
    trash = _aside_name(path)
    artifact.remove_tree(trash)
    os.replace(path, trash)
    note("rename", trash)
    return trash


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_partial(root: Path) -> None:
    """Remove temp folders left by a kill during a write."""
    if root.exists():
        for p in root.iterdir():
            if p.name.startswith(TEMP):
                artifact.remove_tree(p)  # a link there is removed itself, never what it points to


def load_weights(path: Path, model: nn.Module, *, zero3: bool = False) -> None:
    """Copy the checkpoint's trainable weights into ``model`` (call before ``accelerator.prepare``).

    Under DeepSpeed ZeRO-3 (``zero3``) the parameters are partitioned from loading on, so each is gathered,
    written on rank 0 and re-partitioned (``deepspeed.zero.GatheredParameters``); the engine then builds its
    fp32 master weights from them at ``prepare``.
    """
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint {path} does not fit this model (unknown parameters, e.g. {missing[0]})")
    if zero3:
        import deepspeed

        targets = [params[n] for n in weights]
        with deepspeed.zero.GatheredParameters(targets, modifier_rank=0), torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(params[name].dtype))
        return
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def load_training_state(path: Path, *, optimizer: torch.optim.Optimizer, scheduler: LRScheduler,
                        accelerator: Accelerator | None = None, prepared: nn.Module | None = None, rank: int = 0
                        ) -> dict[str, Any]:
    """Restore optimizer, scheduler and this rank's RNG (call after ``prepare``); returns ``state.json``."""
    kind = backend(accelerator) if accelerator is not None else "ddp"
    opt_file = path / OPTIMIZER
    if opt_file.exists() and kind != "deepspeed":
        opt_state = torch.load(opt_file, weights_only=True)
        if kind == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            assert prepared is not None  # FSDP: the caller passes the prepared model
            set_optimizer_state_dict(prepared, getattr(optimizer, "optimizer", optimizer), opt_state,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))
    rng = torch.load(path / RNG, weights_only=True)
    ranks = rng.get("ranks") or [rng]
    mine = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(mine["cpu"])
    if torch.cuda.is_available() and mine["cuda"]:
        torch.cuda.set_rng_state_all(mine["cuda"])
    state: dict[str, Any] = json.loads((path / STATE).read_text(encoding="utf-8"))
    return state


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler
                    ) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from ``path`` (single process); returns ``state.json``."""
    load_weights(path, model)
    return load_training_state(path, optimizer=optimizer, scheduler=scheduler)

"""Bookkeeping of a run folder (``output.dir``): resolved spec, status, versions, and who owns the folder.

The core never sees this: the pipeline writes here before and after each stage. Everything is written
atomically (temp file + ``os.replace``), so a CI job polling ``status.json`` never reads half a file, and a
crash never leaves a corrupt ``job.resolved.yaml`` behind.

Rerunning a job in the same folder resumes it, so the folder must belong to *this* job: the training-relevant
sections (model, lora, data, hdpo, train minus logging/checkpoint cadence) are compared with the folder's
``job.resolved.yaml`` before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import stat
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from hdpo_core.errors import InputError
from hdpo_core.io import atomic_write_json, atomic_write_text
from hdpo_core.layout import RESOLVED_SPEC, STATUS, VERSIONS
from service.runfolder.lock import lock_held
from service.spec.job import dump_yaml, redact_secrets
from service.spec.yaml_io import load_yaml

State = Literal["running", "succeeded", "failed", "interrupted"]
STATES: tuple[str, ...] = ("running", "succeeded", "failed", "interrupted")
#: status.json is a few hundred bytes; a bigger file is not one hdpo-tune wrote.
STATUS_MAX_BYTES = 1 << 20

#: Sections whose change makes a different run; within ``train`` these fields do not count.
TRAINING_SECTIONS = ("model", "lora", "data", "hdpo", "train")
CADENCE_FIELDS = frozenset({"log_every", "save_every", "eval_every", "keep_checkpoints"})
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "datasets", "pydantic", "hdpo-tune")


def inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """``path`` resolved (relative paths against ``root``); raises :class:`InputError` if it leaves ``root``.

    Symlinks are resolved first, so ``root/link -> /etc`` is caught as well as ``../../etc``.
    """
    base = Path(root).resolve()
    p = Path(path)
    target = (p if p.is_absolute() else base / p).resolve()
    if target != base and base not in target.parents:
        raise InputError(f"{path}: path escapes the run folder {base}; use a name inside output.dir "
                         "(no '..', absolute paths or links pointing outside)")
    return target


def training_fingerprint(spec_dict: dict[str, Any]) -> str:
    """sha256 of the training-relevant part of a resolved spec (see :data:`TRAINING_SECTIONS`)."""
    blob = json.dumps(_training_view(spec_dict), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _training_view(spec_dict: dict[str, Any]) -> dict[str, Any]:
    view = {s: spec_dict.get(s) for s in TRAINING_SECTIONS}
    if isinstance(view["train"], dict):
        view["train"] = {k: v for k, v in view["train"].items() if k not in CADENCE_FIELDS}
    if isinstance(view.get("data"), dict):  # a limit on the input, not the job: runs from before it still resume
        view["data"] = {k: v for k, v in view["data"].items() if k != "max_row_bytes"}
    return view


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: node}
    return {prefix: node}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class RunDir:
    """A run folder. Creating the object touches nothing on disk; only ``write_*`` methods create files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        """A path inside the run folder (guarded against traversal)."""
        return inside(name, self.path)

    def _prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    # --- ownership ---------------------------------------------------------------------------------------

    def read_resolved_spec(self) -> dict[str, Any] | None:
        """The folder's ``job.resolved.yaml`` as a dict, or None when there is none."""
        f = self.path / RESOLVED_SPEC
        if not f.is_file():
            return None
        try:
            data = load_yaml(f)
        except InputError:
            raise InputError(f"output.dir: {f} is unreadable, so this folder's run cannot be compared with the "
                             "job; pick a new output.dir or pass --force") from None
        return data if isinstance(data, dict) else None

    def check_compatible(self, spec_dict: dict[str, Any], *, force: bool = False) -> None:
        """Raise :class:`InputError` if the folder already holds a run of a different job.

        Only training-relevant fields count: a changed eval/merge/export/hub/output section or logging and
        checkpoint cadence is the same run (rerunning resumes it). ``force`` skips the check.
        """
        if force:
            return
        old = self.read_resolved_spec()
        if old is None or training_fingerprint(old) == training_fingerprint(spec_dict):
            return
        before, after = _flatten(_training_view(old)), _flatten(_training_view(spec_dict))
        diffs = [k for k in sorted(set(before) | set(after)) if before.get(k, "<absent>") != after.get(k, "<absent>")]
        shown = ", ".join(f"{k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}" for k in diffs[:5])
        more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
        raise InputError(redact_secrets(
            f"output.dir: {self.path} already holds a different job's run ({shown}{more}); pick a new "
            "output.dir, or pass --force to start over in this folder"))

    # --- writers -----------------------------------------------------------------------------------------

    def write_resolved_spec(self, spec_dict: dict[str, Any]) -> Path:
        """Write ``job.resolved.yaml`` (every default filled in), atomically."""
        self._prepare()
        return atomic_write_text(self.path / RESOLVED_SPEC, dump_yaml(spec_dict))

    def write_status(self, stage: str, state: State, step: int | None = None, total_steps: int | None = None,
                     error: str | None = None, **extra: Any) -> Path:
        """Write ``status.json`` atomically: ``{stage, state, step, total_steps, updated_at, error, pid, ...extra}``
        (``pid``: the process that wrote it, named when it dies without writing its end)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        self._prepare()
        status = {"stage": stage, "state": state, "step": step, "total_steps": total_steps,
                  "updated_at": _now(), "error": None if error is None else redact_secrets(error),
                  "pid": os.getpid(), **extra}
        return atomic_write_json(self.path / STATUS, status)

    def read_status(self) -> dict[str, Any] | None:
        """``status.json`` as a reader should see it, or None when absent or unreadable. A ``running`` whose
        process is gone (the folder's lock is free: it was killed by a signal or aborted, and could not write
        its end) reads ``interrupted``, with a line saying so."""
        data = self._status_file()
        if data is not None and data.get("state") == "running" and lock_held(self.path) is False:
            return _died(data)
        return data

    def settle_dead_run(self) -> None:
        """Rewrite a ``running`` left by a process that died (call holding the folder's lock: whoever wrote
        ``running`` is gone) as ``interrupted``, so every later reader sees what happened."""
        data = self._status_file()
        if data is not None and data.get("state") == "running":
            with contextlib.suppress(OSError):  # readers see it as interrupted anyway; the stage's own write names a fault
                atomic_write_json(self.path / STATUS, {**_died(data), "updated_at": _now()})

    def _status_file(self) -> dict[str, Any] | None:
        try:
            fd = os.open(self.path / STATUS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return None
                data = json.loads(fh.read(STATUS_MAX_BYTES))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_versions(self) -> Path:
        """Write ``versions.json``: python, key package versions and the git commit of the working folder."""
        self._prepare()
        return atomic_write_json(self.path / VERSIONS, collect_versions())


def _died(status: dict[str, Any]) -> dict[str, Any]:
    pid = status.get("pid")
    who = f"pid {pid}" if isinstance(pid, int) else "the process that ran it"
    return {**status, "state": "interrupted",
            "error": f"{status.get('stage')}: the hdpo-tune process ({who}) ended without recording its end "
                     "(killed by a signal such as SIGKILL or out of memory, or aborted); rerun the same command "
                     "to continue (finished stages are skipped)"}


def collect_versions() -> dict[str, Any]:
    """Versions of python and :data:`PACKAGES` (None if not installed) plus ``git`` (commit, dirty) if known."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["hdpo-tune"] is None:
        from hdpo_core import __version__

        out["hdpo-tune"] = __version__
    out["git"] = git_commit()
    return out


def git_commit(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git repo at ``cwd`` (default: the current folder); None when unknown."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}

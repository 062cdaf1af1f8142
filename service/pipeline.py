"""The stage pipeline behind `hdpo-tune run`: validate -> train -> eval -> merge -> export -> push.

Every stage is idempotent: a finished stage is recorded in ``status.json`` (``stages``) and skipped when the
job is run again, unless ``force``. A failure writes ``state: failed`` with the one-line error; SIGTERM/SIGINT
writes ``interrupted`` after the trainer's checkpoint. Only the main process writes the run folder; under a
distributed launch the other ranks take part in training only and leave the later stages to the main process.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hdpo_core.errors import HdpoError, InputError, Interrupted

from .rundir import RunDir
from .spec import JobSpec, load_spec, spec_to_dict

STAGES = ("train", "eval", "merge", "export", "push")


def _is_main() -> bool:
    from .launch import process_state

    return bool(process_state().is_main_process)


def _wait_for_everyone() -> None:
    """Barrier across launched processes (no-op in a single process)."""
    from .launch import process_state

    process_state().wait_for_everyone()


def _enabled(spec: JobSpec, stage: str) -> bool:
    section = getattr(spec, stage if stage != "push" else "hub", None)
    if stage == "train":
        return True
    if section is None:
        return False
    if stage == "push":
        return bool(getattr(section, "repo_id", None))
    if stage == "export":
        formats = (getattr(section, "onnx", None), getattr(section, "gguf", None))
        return any(f is not None and getattr(f, "enabled", False) for f in formats)
    return bool(getattr(section, "enabled", True))


def _stage_fn(stage: str, spec: JobSpec, rd: RunDir, force: bool) -> Callable[[], dict[str, Any]]:
    if stage == "train":
        from .train_stage import run_train_stage

        return lambda: run_train_stage(spec, rd, fresh=force)
    if stage == "eval":
        from .eval_stage import run_eval_for_job

        return lambda: run_eval_for_job(spec, rd.path)
    from . import ship

    if stage == "merge":
        return lambda: ship.merge_run(rd.path, force=force) or {}
    if stage == "export":
        return lambda: ship.export_run(rd.path, force=force) or {}
    return lambda: ship.push_run(rd.path) or {}


@contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM and SIGINT outside the training loop raise KeyboardInterrupt, so that a stage stopped by
    ``kill``/Kubernetes/``docker stop``/Ctrl-C records ``interrupted`` instead of leaving ``running`` behind.
    SIGINT is installed too because a process started in the background inherits it *ignored*, while the
    trainer's handler catches it during training: the same signal should stop every stage alike.
    (The trainer installs its own handlers while it trains: it checkpoints first, then raises Interrupted.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _open_run_folder(rd: RunDir, resolved: dict[str, Any]) -> None:
    """Create the run folder and its first files. A folder that cannot be written (a read-only mount, another
    user's folder: the usual container mistakes) is bad input, named with the fix, not a traceback."""
    try:
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.write_resolved_spec(resolved)
        rd.write_versions()
    except OSError as exc:
        raise InputError(f"output.dir: cannot write the run folder {rd.path} ({exc.strerror or exc}); point "
                         "output.dir to a writable folder (in a container: a writable -v mount that the --user "
                         "uid may write)") from None


def run_job(job: Path, *, force: bool = False, only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every enabled stage of ``job``; returns per-stage results. Raises :class:`HdpoError`."""
    spec = load_spec(job)
    rd = RunDir(Path(spec.output.dir))
    resolved = spec_to_dict(spec)
    main = _is_main()
    if main:
        rd.check_compatible(resolved, force=force)
        _open_run_folder(rd, resolved)
    _wait_for_everyone()  # every rank reads status.json only after the main process has checked the folder
    done = set((rd.read_status() or {}).get("stages_done", [])) if not force else set()
    results: dict[str, Any] = {}
    with _terminate_raises():  # for the whole run: SIGTERM never kills the process silently mid-write
        for stage in STAGES:
            if only and stage not in only or not _enabled(spec, stage):
                continue
            if stage != "train" and not main:
                continue  # eval/merge/export/push read final/ from disk and write the run folder: main only
            if stage in done:
                print(f"{stage}: already done in {rd.path} (use --force to redo)", file=sys.stderr)
                continue
            results[stage] = _run_stage(stage, spec, rd, force=force, main=main, done=done)
            done.add(stage)
            if main:
                rd.write_status(stage, "running", stages_done=sorted(done))
    if main:
        rd.write_status("done", "succeeded", stages_done=sorted(done))
        _print_summary(rd.path, results)
    return results


def _run_stage(stage: str, spec: JobSpec, rd: RunDir, *, force: bool, main: bool, done: set[str]) -> Any:
    """Run one stage; on any failure record ``failed`` or ``interrupted`` (naming the stage) and re-raise."""
    try:
        if main:
            rd.write_status(stage, "running", stages_done=sorted(done))
        return _stage_fn(stage, spec, rd, force)()
    except Interrupted as exc:
        if main:
            rd.write_status(stage, "interrupted", error=exc.message, stages_done=sorted(done))
        raise
    except KeyboardInterrupt as exc:
        by = exc.args[0] if exc.args else f"signal {int(signal.SIGINT)}"
        message = (f"stopped by {by} during the {stage} stage; rerun the same command to continue "
                   "(finished stages are skipped)")
        if main:
            rd.write_status(stage, "interrupted", error=message, stages_done=sorted(done))
        raise Interrupted(message) from None
    except HdpoError as exc:
        if main:
            rd.write_status(stage, "failed", error=exc.message, stages_done=sorted(done))
        raise
    except BaseException as exc:
        if main:
            rd.write_status(stage, "failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                            stages_done=sorted(done))
        raise


def _print_summary(run_dir: Path, results: dict[str, Any]) -> None:
    lines = [f"run folder: {run_dir}"]
    train = results.get("train")
    if train and train.get("metrics"):
        m = train["metrics"]
        lines.append(f"train: {train['steps']} steps, final loss {m.get('loss', float('nan')):.4f}, "
                     f"reward accuracy {m.get('rewards/accuracies', float('nan')):.2f}, entropy "
                     f"{m.get('entropy', float('nan')):.3f} nats/token (reference {m.get('ref_entropy', float('nan')):.3f})")
    headline = (results.get("eval") or {}).get("headline")
    if headline:
        lines.extend(f"eval: {line}" for line in headline)
    for sub in ("final", "eval", "merged", "onnx", "gguf"):
        if (run_dir / sub).exists():
            lines.append(f"{sub}: {run_dir / sub}")
    print("\n".join(lines))

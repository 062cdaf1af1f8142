"""The stage pipeline behind `hdpo-tune run`: open the run folder, then each stage of :data:`service.stages.registry.STAGES`.

Every stage is idempotent: a finished stage is recorded in ``status.json`` (``stages_done``) and skipped when
the job is run again, unless ``force``, and only while the folders it built still verify against their
manifests (:mod:`hdpo_core.artifact`): a record alone never makes a stage done. A failure writes
``state: failed`` with the one-line error; SIGTERM/SIGINT writes ``interrupted`` after the trainer's checkpoint.
Only the main process writes the run folder; under a distributed launch the other ranks take part in training
only and leave the later stages to the main process.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from hdpo_core import artifact, layout
from hdpo_core.errors import HdpoError, InputError, Interrupted
from service.faults import fault_error
from service.runfolder import ownership
from service.runfolder.record import RunDir, State
from service.runfolder.run import Run, check_input_kinds, input_paths
from service.stages.registry import NAMES, STAGES, Stage, StageResult, stage_named
from service.stages.runtime import is_main_process, wait_for_everyone


def _stage_fn(stage: str, run: Run, force: bool) -> Callable[[], StageResult]:
    """The call that runs ``stage`` on ``run`` (one seam, so a test can wrap a stage)."""
    chosen = stage_named(stage)
    return lambda: chosen.run(run, force)


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


def open_run_folder(run: Run, *, force: bool) -> Run:
    """Make ``run``'s folder ready to write, before any stage runs (main process only): the folder is hdpo-tune's
    (new, empty or marked), no input is one of its outputs, this process holds its lock, no entry where
    hdpo-tune keeps its own is a link or special file, and it holds this job (or ``force``). Then the resolved
    spec and versions are written. Returns the run bound to the folder's resolved path (resolved once here:
    nothing later follows a link the user gave as ``output.dir`` again)."""
    ownership.check_location(run.path)
    ownership.check_inputs_not_outputs(run.path, input_paths(run.spec))
    run = replace(run, folder=RunDir(ownership.open_folder(run.path)))
    run.folder.settle_dead_run()
    remove_temporaries(run.path)  # what a killed run left, now that no other run can be writing them
    resolved = run.resolved()
    run.folder.check_compatible(resolved, force=force)
    before = ownership.listing(run.path)
    try:
        run.folder.write_resolved_spec(resolved)
        run.folder.write_versions()
    except OSError as exc:
        error = fault_error(exc, "start-up", run.path) or InputError(f"start-up: {run.path}: {exc}")
        with contextlib.suppress(OSError):
            run.folder.write_status("start-up", "failed", error=error.message)
        raise error from None
    finally:
        ownership.record_new(run.path, before)
    return run


def run_job(job: Path, *, force: bool = False, only: tuple[str, ...] = ()) -> dict[str, StageResult]:
    """Run every enabled stage of ``job``; returns per-stage results. Raises :class:`HdpoError`."""
    run = Run.from_job(job)
    check_input_kinds(run.spec)
    unknown = [s for s in only if s not in NAMES]
    if unknown:
        raise InputError(f"--only: unknown stage {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    main = is_main_process()
    if main:
        run = open_run_folder(run, force=force)
    wait_for_everyone()  # every rank reads status.json only after the main process has checked the folder
    done = set() if force else run.stages_done()
    results: dict[str, StageResult] = {}
    with _terminate_raises():  # for the whole run: SIGTERM never kills the process silently mid-write
        for stage in STAGES:
            if only and stage.name not in only or not stage.enabled(run.spec) or stage.main_only and not main:
                continue
            if stage.name in done:
                problem = artifact_problem(stage, run)
                if problem is None:
                    print(f"{stage.name}: already done in {run.path} (use --force to redo)", file=sys.stderr)
                    continue
                print(f"{stage.name}: recorded as done but {problem}; redoing it", file=sys.stderr)
                done.discard(stage.name)
            results[stage.name] = run_stage(stage, run, force=force, main=main, done=done)
            done.add(stage.name)
            if main:
                run.mark(stage.name, "running", done)
    if main:
        run.mark("done", "succeeded", done)
        _print_summary(run.path, results)
    return results


def run_stage(stage: Stage, run: Run, *, force: bool, main: bool = True, done: set[str] | None = None) -> StageResult:
    """Run one stage; on any failure record ``failed`` or ``interrupted`` (naming the stage) and re-raise as
    one :class:`HdpoError` line. An I/O fault (disk full, read-only, permission) becomes one line naming the
    path, after hdpo-tune's temporary leftovers of the stage are removed."""
    done = run.stages_done() if done is None else done
    before = ownership.listing(run.path)

    def mark(state: State, error: str | None = None) -> None:
        if not main:
            return
        if state != "running":  # temporaries first: on a full disk they hold the space status.json needs
            remove_temporaries(run.path)
        with contextlib.suppress(OSError):  # a full disk must not hide the stage's own error
            run.mark(stage.name, state, done, error=error)

    try:
        mark("running")
        return _stage_fn(stage.name, run, force)()
    except Interrupted as exc:
        mark("interrupted", exc.message)
        raise
    except KeyboardInterrupt as exc:
        by = exc.args[0] if exc.args else f"signal {int(signal.SIGINT)}"
        message = (f"stopped by {by} during the {stage.name} stage; rerun the same command to continue "
                   "(finished stages are skipped)")
        mark("interrupted", message)
        raise Interrupted(message) from None
    except HdpoError as exc:
        mark("failed", exc.message)
        raise
    except BaseException as exc:
        error = fault_error(exc, stage.name, run.path, writes=stage.writes) if main else None
        if error is None:
            mark("failed", f"{type(exc).__name__}: {str(exc)[:300]}")
            raise
        mark("failed", error.message)
        raise error from None
    finally:
        if main:
            ownership.record_new(run.path, before)


def run_folder_stage(folder: Path, name: str, *, force: bool) -> StageResult:
    """``hdpo-tune merge|export|push RUN``: one stage on an existing run folder, the same :class:`Run` and
    the same bookkeeping as inside ``hdpo-tune run`` (the folder's lock, status.json, one-line faults)."""
    run = Run.from_folder(ownership.open_existing(folder))
    run.folder.settle_dead_run()
    remove_temporaries(run.path)
    done = run.stages_done()
    result = run_stage(stage_named(name), run, force=force, done=done)
    with contextlib.suppress(OSError):
        run.mark(name, "succeeded", done | {name})
    return result


def artifact_problem(stage: Stage, run: Run) -> str | None:
    """What is wrong with the folders ``stage`` built (``None``: every one verifies against its manifest)."""
    for name in stage.artifacts(run.spec):
        problem = artifact.verify(run.path / name)
        if problem is not None:
            return f"{name}/ is not whole ({problem})"
    return None


def remove_temporaries(folder: Path) -> None:
    """What an interrupted write of hdpo-tune leaves: the temporary and moved-aside artifact folders
    (``NAME.tmp``, ``NAME.old``) and checkpoint temp folders. Only in a folder hdpo-tune owns, only real folders
    of those names, never through a link."""
    if not ownership.is_owned(folder):
        return
    for name in layout.ARTIFACT_FOLDERS:
        artifact.remove_leftovers(folder / name)
    if artifact.is_real_dir(folder / layout.CHECKPOINTS):
        from hdpo_core.checkpoint import clean_partial

        clean_partial(folder / layout.CHECKPOINTS)


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
    for sub in (layout.FINAL, layout.EVAL, layout.MERGED, layout.ONNX, layout.GGUF):
        if (run_dir / sub).exists():
            lines.append(f"{sub}: {run_dir / sub}")
    print("\n".join(lines))

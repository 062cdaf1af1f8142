"""The stages of a run and the one contract they share.

A stage is an object with a ``name``, ``enabled(spec)`` (does this job want it) and ``run(run, force)`` (do it
for this :class:`~service.runfolder.run.Run`; ``force`` redoes work that is already current). ``main_only`` stages read
``final/`` from disk and write the run folder, so under a distributed launch only the main process runs them.
``writes`` is False for a stage that only reads the run folder (the push): its I/O faults are read faults.
``artifacts(spec)`` names the folders the stage builds (whole or absent, :mod:`hdpo_core.artifact`): a stage
recorded as done is skipped only while every one of them verifies against its manifest.
:data:`STAGES` is the order :func:`service.stages.pipeline.run_job` walks; a new stage is one more object here.

Heavy imports (torch, transformers, onnx) happen inside ``run``, so listing or skipping stages costs nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

from hdpo_core import layout
from service.runfolder.run import Run
from service.spec.job import JobSpec

StageResult = dict[str, Any]


class Stage(Protocol):
    name: str
    main_only: bool
    writes: bool

    def enabled(self, spec: JobSpec) -> bool:
        """Whether the job asks for this stage."""
        ...

    def artifacts(self, spec: JobSpec) -> tuple[str, ...]:
        """The run-folder names of the artifact folders this stage builds (empty: none)."""
        ...

    def run(self, run: Run, force: bool) -> StageResult:
        """Do the stage's work for ``run``; returns what the summary prints. Raises HdpoError."""
        ...


class Train:
    name, main_only, writes = "train", False, True

    def enabled(self, spec: JobSpec) -> bool:
        return True

    def artifacts(self, spec: JobSpec) -> tuple[str, ...]:
        return (layout.FINAL,)

    def run(self, run: Run, force: bool) -> StageResult:
        from service.stages.train import run_train_stage

        return run_train_stage(run, fresh=force)


class Eval:
    name, main_only, writes = "eval", True, True

    def enabled(self, spec: JobSpec) -> bool:
        return spec.eval is not None and spec.eval.enabled

    def artifacts(self, spec: JobSpec) -> tuple[str, ...]:
        return (layout.EVAL,)

    def run(self, run: Run, force: bool) -> StageResult:
        from service.stages.eval import run_eval_for_job

        return run_eval_for_job(run)


class Merge:
    name, main_only, writes = "merge", True, True

    def enabled(self, spec: JobSpec) -> bool:
        return spec.merge is not None and spec.merge.enabled

    def artifacts(self, spec: JobSpec) -> tuple[str, ...]:
        return (layout.MERGED,)

    def run(self, run: Run, force: bool) -> StageResult:
        from service.stages.ship import merge

        return merge(run, force=force)


class Export:
    name, main_only, writes = "export", True, True

    def enabled(self, spec: JobSpec) -> bool:
        return spec.export is not None and (spec.export.onnx.enabled or spec.export.gguf.enabled)

    def artifacts(self, spec: JobSpec) -> tuple[str, ...]:
        from service.stages.ship import export_folders

        return export_folders(spec.export) if spec.export else ()

    def run(self, run: Run, force: bool) -> StageResult:
        from service.stages.ship import export

        return export(run, force=force)


class Push:
    name, main_only, writes = "push", True, False

    def enabled(self, spec: JobSpec) -> bool:
        return spec.hub is not None and spec.hub.repo_id is not None

    def artifacts(self, spec: JobSpec) -> tuple[str, ...]:
        return ()

    def run(self, run: Run, force: bool) -> StageResult:
        from service.stages.ship import push

        return push(run)


STAGES: tuple[Stage, ...] = (Train(), Eval(), Merge(), Export(), Push())
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage_named(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)

"""One run: the validated job spec, its run folder, and the folder's state.

Every stage receives a :class:`Run` and nothing else, whether it was opened from a job file
(``hdpo-tune run job.yaml``: :meth:`Run.from_job`) or from a run folder written earlier
(``hdpo-tune merge|export|push RUN``, ``hdpo-tune eval RUN``: :meth:`Run.from_folder`, which reads the folder's
``job.resolved.yaml``). No stage parses YAML itself, and a stage reads the same typed :class:`JobSpec` under
either entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdpo_core.errors import InputError
from hdpo_core.layout import RESOLVED_SPEC
from service.runfolder.record import RunDir, State
from service.spec.job import JobSpec, load_spec, spec_from_resolved, spec_to_dict
from service.spec.yaml_io import load_yaml


@dataclass(frozen=True)
class Run:
    """A job spec bound to its run folder. ``path`` is where this run lives now (a folder can be moved: a
    run opened from a folder uses that folder, not the ``output.dir`` written in its spec)."""

    spec: JobSpec
    folder: RunDir

    @property
    def path(self) -> Path:
        return self.folder.path

    @classmethod
    def from_job(cls, job: str | Path) -> Run:
        """Open the run a job file describes (``output.dir``); reads and validates the job file."""
        spec = load_spec(job)
        return cls(spec, RunDir(Path(spec.output.dir)))

    @classmethod
    def from_folder(cls, path: str | Path) -> Run:
        """Open a run folder written by ``hdpo-tune run`` from its ``job.resolved.yaml``."""
        folder = Path(path)
        resolved = folder / RESOLVED_SPEC
        if not resolved.is_file():
            raise InputError(f"{resolved} not found: RUN_DIR must be a run folder written by `hdpo-tune run`")
        return cls(spec_from_resolved(load_yaml(resolved), resolved), RunDir(folder))

    def resolved(self) -> dict[str, Any]:
        """The spec as plain data, every default filled in (what ``job.resolved.yaml`` holds)."""
        return spec_to_dict(self.spec)

    def stages_done(self) -> set[str]:
        """Stages this folder records as finished (``status.json``)."""
        done = (self.folder.read_status() or {}).get("stages_done", [])
        return {s for s in done if isinstance(s, str)} if isinstance(done, list) else set()

    def mark(self, stage: str, state: State, done: set[str], **extra: Any) -> None:
        """Record ``stage``'s ``state`` and the finished stages in ``status.json``. The training length
        (``total_steps``) stays there after the train stage: a reader that first looks during a later stage
        (the jobs service polling a short job on a loaded machine) still learns it."""
        if extra.get("total_steps") is None and "train" in done:
            extra["total_steps"] = (self.folder.read_status() or {}).get("total_steps")
        self.folder.write_status(stage, state, stages_done=sorted(done), **extra)


LATER_INPUTS = ("eval.tasks", "eval.eval_pairs", "distributed.accelerate_config")  # read after training


def check_input_kinds(spec: JobSpec) -> None:
    """Before the run folder is touched: every local input file is a regular file and every model folder holds
    only regular files and folders (a FIFO would block the stage that opens it forever; ``/dev/zero`` never
    ends). Hub ids, absent paths and the cache folder are left to the stage that uses them."""
    problems = input_kind_problems(spec)
    if problems:
        raise InputError(problems[0])


def input_kind_problems(spec: JobSpec, fields: tuple[str, ...] | None = None) -> list[str]:
    """One line per input of ``fields`` (default: all) that is not a regular file (see above)."""
    from hdpo_core.inputs import check_file, check_model_folder

    problems = []
    for field, value in input_paths(spec).items():
        if value is None or field == "train.ref_cache_dir" or not os.path.lexists(value) or \
                fields is not None and field not in fields:
            continue
        try:
            if not os.path.isdir(value):
                check_file(value, field)
            elif field == "model.name_or_path":
                check_model_folder(value)
        except InputError as exc:
            problems.append(exc.message)
    return problems


def input_paths(spec: JobSpec) -> dict[str, str | None]:
    """Every path the job reads (field -> resolved path or Hub id): none may be one the run writes."""
    return {"model.name_or_path": spec.model.name_or_path, "data.train": spec.data.train,
            "data.eval": spec.data.eval, "eval.tasks": spec.eval.tasks if spec.eval else None,
            "eval.eval_pairs": spec.eval.eval_pairs if spec.eval else None,
            "train.ref_cache_dir": spec.train.ref_cache_dir,
            "distributed.accelerate_config": spec.distributed.accelerate_config}

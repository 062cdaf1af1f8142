"""The run folder's layout: the name of every file and folder hdpo-tune keeps in a run folder, in one place.

A run folder (``output.dir``) holds what the core writes (checkpoints, ``metrics.jsonl``, TensorBoard events,
the eval report, the export folders, each artifact's ``checksums.json``) and what the service writes (the
ownership marker, the lock, ``status.json``, ``job.resolved.yaml``, the jobs service's ``job.yaml`` and
``job.log``). Every module that builds a path in a run folder asks this module for the name, so a name is
written once and a reader and its writer can never disagree.

Why here, in the core: the core writes some of these names and never imports the service, so the names must
live where both can see them. This module holds only names, the paths built from them (:class:`RunLayout`)
and the read-only lookups that need nothing but the names (the checkpoint listing); it imports nothing from
hdpo-tune, loads no torch, and is cheap enough for the jobs service's pages. What only the service does with
a run folder lives in ``service/runfolder/``: ``status.json``, ``job.resolved.yaml`` and ``versions.json``
(``record.py``: the one reader and writer of ``status.json``), the marker/manifest and ``--force``
(``ownership.py``), the lock (``lock.py``). The artifact mechanism (build aside, manifest, rename) is
:mod:`hdpo_core.artifact`; the checkpoint format is :mod:`hdpo_core.checkpoint`; both take their names
from here.

``tests/service/test_layout_names.py`` fails when one of these names appears as a literal anywhere else in
``hdpo_core/`` or ``service/``. Names that a library or format decides (a Hugging Face model folder's
``config.json``, ``model.onnx``, ``genai_config.json``, an Ollama ``Modelfile``) are not run-folder names: the
module that writes that format owns them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# --- top-level names ------------------------------------------------------------------------------

#: The ownership marker, also the manifest of the top-level names hdpo-tune created (``service/runfolder``).
MARKER = ".hdpo-tune.json"
#: The one process lock of a run folder (``service/runfolder/lock.py``).
LOCK = ".hdpo-tune.lock"
#: The job spec with every default filled in; a folder's run is opened from it.
RESOLVED_SPEC = "job.resolved.yaml"
#: Stage, state, step and the finished stages, rewritten atomically (``service/runfolder/record.py``).
STATUS = "status.json"
#: Python and package versions and the git commit of the run.
VERSIONS = "versions.json"
#: What the data stage found (rows kept, dropped, sources); read back into the model card.
DATA_INFO = "data_info.json"
#: One JSON object per logged optimizer step (:mod:`hdpo_core.metrics_log`).
METRICS = "metrics.jsonl"
#: TensorBoard event files.
TENSORBOARD = "tensorboard"
#: The experiment trackers' run ids, so a resumed run logs to the same runs.
TRACKING = "tracking.json"
#: A sweep's runs, one per alpha, and its report.
SWEEP = "sweep"
#: The jobs service's copy of a served job's spec, written before the run starts.
JOB_FILE = "job.yaml"
#: The jobs service's log of a served job's process (stdout and stderr of every attempt).
JOB_LOG = "job.log"

# --- artifact folders: whole or absent (:mod:`hdpo_core.artifact`) ------------------------------------

FINAL = "final"
START_MODEL = "start_model"
EVAL = "eval"
MERGED = "merged"
ONNX = "onnx"
GGUF = "gguf"
CHECKPOINTS = "checkpoints"
ARTIFACT_FOLDERS = (FINAL, START_MODEL, EVAL, MERGED, ONNX, GGUF, CHECKPOINTS)
#: Where an artifact folder ``NAME`` is built (``NAME.tmp``) and where the previous one waits (``NAME.old``).
TEMP_SUFFIX = ".tmp"
ASIDE_SUFFIX = ".old"

#: Every top-level name a run (or a sweep) may create in its folder (an artifact's temporary and moved-aside
#: names included, so ``--force`` and the clean-up after a kill treat them as hdpo-tune's).
OUTPUTS = frozenset({
    MARKER, LOCK, RESOLVED_SPEC, STATUS, VERSIONS, DATA_INFO, METRICS, TENSORBOARD, SWEEP, TRACKING,
    *(name + suffix for name in ARTIFACT_FOLDERS for suffix in ("", TEMP_SUFFIX, ASIDE_SUFFIX)),
})

# --- names inside the folders ---------------------------------------------------------------------

#: Every artifact folder's manifest (size and sha256 of every other file), written last.
MANIFEST = "checksums.json"
#: The eval report (in ``eval/``).
EVAL_RESULTS = "results.json"
EVAL_SAMPLES = "samples.jsonl"
EVAL_SUMMARY = "summary.md"
#: An export's check report (in ``onnx/`` and ``gguf/``).
EXPORT_REPORT = "validation.json"
#: The ONNX quantization report (in ``onnx/``): size, speed and accuracy against float32.
QUANT_REPORT = "quantization.json"
#: Next to a QLoRA adapter (in ``final/``): the k-bit base's quantization settings.
QLORA_SETTINGS = "quantization.json"
#: What a merge did (in ``merged/``).
MERGE_INFO = "merge.json"

#: A checkpoint is ``checkpoints/step-NNNNNNNN/`` (eight digits or more, so names sort by step).
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_DIGITS = 8
CHECKPOINT_STATE = "state.json"
CHECKPOINT_WEIGHTS = "trainable.safetensors"
CHECKPOINT_OPTIMIZER = "optimizer.pt"
CHECKPOINT_SCHEDULER = "scheduler.pt"
CHECKPOINT_RNG = "rng.pt"
#: A checkpoint being written, or moved aside to be removed, has a name that starts with this (never listed).
CHECKPOINT_TEMP = ".tmp-"

#: A sweep's files in ``sweep/``: the report (JSON and markdown), the shared reference cache, one run folder
#: and one job file per alpha.
SWEEP_REPORT = "sweep.json"
SWEEP_SUMMARY = "sweep.md"
SWEEP_REF_CACHE = "ref-cache"
SWEEP_RUN_PREFIX = "alpha-"
SWEEP_JOB_PREFIX = "job-alpha-"
#: The winner's job (its merge, export and push sections from the sweep's job), in ``sweep/``.
SWEEP_WINNER_JOB = "job-winner.yaml"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at ``step``."""
    return f"{CHECKPOINT_PREFIX}{step:0{CHECKPOINT_DIGITS}d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder name; None for any other name (a temporary one included)."""
    digits = name[len(CHECKPOINT_PREFIX):]
    if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() and len(digits) >= CHECKPOINT_DIGITS:
        return int(digits)
    return None


def step_of(checkpoint: Path) -> int:
    """The step of a checkpoint folder from :func:`list_checkpoints`; ``ValueError`` for any other folder."""
    step = checkpoint_step(checkpoint.name)
    if step is None:
        raise ValueError(f"{checkpoint} is not a checkpoint folder")
    return step


def job_log(rank: int) -> str:
    """The log of one process of a served job: rank 0 (or a one-process job) writes ``job.log``; the other
    ranks of a job the Ray executor spreads over nodes write ``job.rankR.log`` beside it."""
    return JOB_LOG if rank == 0 else f"job.rank{rank}.log"


def sweep_run(alpha: float) -> str:
    """The run folder name of a sweep's run at ``alpha`` (in ``sweep/``)."""
    return f"{SWEEP_RUN_PREFIX}{alpha:g}"


def sweep_job(alpha: float) -> str:
    """The job file name of a sweep's run at ``alpha`` (in ``sweep/``)."""
    return f"{SWEEP_JOB_PREFIX}{alpha:g}.yaml"


def is_real_dir(path: Path) -> bool:
    """A folder itself, not a link to one (``lstat``: a link is never followed)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_real_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def list_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under ``root`` (real folders holding their ``state.json``), oldest first.

    The one listing: the trainer resumes from it and prunes with it, the jobs service and the console show it.
    Temporary folders (:data:`CHECKPOINT_TEMP`) and links are never listed.
    """
    try:
        entries = list(root.iterdir()) if is_real_dir(root) else []
    except OSError:
        return []
    done = [p for p in entries if checkpoint_step(p.name) is not None and is_real_dir(p)
            and _is_real_file(p / CHECKPOINT_STATE)]
    return sorted(done, key=lambda p: p.name)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder. Building it touches nothing on disk."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def resolved_spec(self) -> Path:
        return self.root / RESOLVED_SPEC

    @property
    def status(self) -> Path:
        return self.root / STATUS

    @property
    def versions(self) -> Path:
        return self.root / VERSIONS

    @property
    def data_info(self) -> Path:
        return self.root / DATA_INFO

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def tracking(self) -> Path:
        return self.root / TRACKING

    @property
    def sweep(self) -> Path:
        return self.root / SWEEP

    @property
    def job_file(self) -> Path:
        return self.root / JOB_FILE

    @property
    def job_log(self) -> Path:
        return self.root / JOB_LOG

    @property
    def final(self) -> Path:
        return self.root / FINAL

    @property
    def start_model(self) -> Path:
        return self.root / START_MODEL

    @property
    def eval(self) -> Path:
        return self.root / EVAL

    @property
    def eval_results(self) -> Path:
        return self.root / EVAL / EVAL_RESULTS

    @property
    def merged(self) -> Path:
        return self.root / MERGED

    @property
    def onnx(self) -> Path:
        return self.root / ONNX

    @property
    def gguf(self) -> Path:
        return self.root / GGUF

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint at ``step``."""
        return self.checkpoints / checkpoint_name(step)

    def list_checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first (:func:`list_checkpoints`)."""
        return list_checkpoints(self.checkpoints)

"""The read-only catalogue of ``hdpo-tune ui RUN_OR_FOLDER...``: run folders and sweep folders on this machine.

A path given on the command line is a run folder (it has ``status.json``, ``job.resolved.yaml`` or
``metrics.jsonl``), a sweep folder (``sweep.json`` or ``job-alpha-*.yaml``, with one ``alpha-A/`` run per alpha),
or a folder holding either one level down (``runs/`` of several runs, a sweep's ``OUTPUT/`` with ``sweep/``).
The folders are scanned again on every list, so runs that appear while the console is open show up, as
TensorBoard's ``--logdir`` does. Pages and URLs name a run by a digest of its path, never by the path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdpo_core import layout

from .runinfo import details, last_metrics, progress, read_json, summary
from .view import NotFound, numeric_alpha

RUN_MARKERS = (layout.STATUS, layout.RESOLVED_SPEC, layout.METRICS)


def _id(prefix: str, path: Path) -> str:
    return f"{prefix}-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in RUN_MARKERS)


def is_sweep(path: Path) -> bool:
    return path.is_dir() and ((path / layout.SWEEP_REPORT).is_file()
                              or any(path.glob(f"{layout.SWEEP_JOB_PREFIX}*.yaml")))


@dataclass(frozen=True)
class Catalogue:
    """Run folders and sweeps under the paths given to ``hdpo-tune ui``."""

    roots: tuple[Path, ...]

    def scan(self) -> tuple[dict[str, Path], dict[str, Path]]:
        runs: dict[str, Path] = {}
        sweeps: dict[str, Path] = {}

        def visit(path: Path, depth: int) -> None:
            if path.is_symlink() and depth > 0:
                return  # never follow a link out of the folders given
            if is_sweep(path):
                sweeps[_id("sweep", path)] = path
                for run in sorted(path.glob(f"{layout.SWEEP_RUN_PREFIX}*")):
                    if is_run(run):
                        runs[_id("run", run)] = run
            elif is_run(path):
                runs[_id("run", path)] = path
            elif depth < 2 and path.is_dir():
                for child in sorted(path.iterdir()):
                    if child.is_dir():
                        visit(child, depth + 1)

        for root in self.roots:
            visit(root.resolve(), 0)
        return runs, sweeps


class LocalView:
    """The console's data for ``hdpo-tune ui``: every run is visible, nothing can be changed."""

    read_only = True

    def __init__(self, catalogue: Catalogue) -> None:
        self.runs, self.sweep_dirs = catalogue.scan()

    def run_dir(self, job_id: str) -> Path:
        if job_id not in self.runs:
            raise NotFound(job_id)
        return self.runs[job_id]

    def _row(self, job_id: str, path: Path) -> dict[str, Any]:
        row = summary(path)
        alpha = numeric_alpha(row, last_metrics(path, 1))
        return {**row, "id": job_id, "name": path.name, "where": path.parent.name, "status": row["state"],
                "fine_tuned_model": None, "suffix": None, "metadata": None, "alpha_value": alpha,
                "created_at": int(path.stat().st_mtime)}

    def jobs(self) -> list[dict[str, Any]]:
        rows = [self._row(i, p) for i, p in self.runs.items()]
        return sorted(rows, key=lambda r: -r["created_at"])

    def job(self, job_id: str) -> dict[str, Any]:
        path = self.run_dir(job_id)
        return {**self._row(job_id, path), **details(path)}

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """A run folder has no event log; its stages and last error read as events."""
        status = progress(self.run_dir(job_id))
        out = [{"level": "info", "message": f"Stage {s} done", "created_at": None} for s in status["stages_done"]]
        if status["state"]:
            out.append({"level": "error" if status["error"] else "info", "created_at": None,
                        "message": f"{status['stage']}: {status['state']}" + (f" - {status['error']}"
                                                                               if status["error"] else "")})
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        out = []
        for sweep_id, path in self.sweep_dirs.items():
            report = read_json(path, layout.SWEEP_REPORT) or {}
            members = [i for i, p in self.runs.items() if p.parent == path]
            out.append({"id": sweep_id, "name": f"{path.parent.name}/{path.name}", "select": report.get("metric"),
                        "winner": report.get("winner"), "jobs": members})
        return out

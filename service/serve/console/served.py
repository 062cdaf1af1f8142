"""The console's data under ``hdpo-tune serve``: the signed-in key's jobs, from the database and their run
folders. Another key's job is :class:`~.view.NotFound` (the API's 404), and no server path reaches a page:
the model is the name the job was created with, and paths inside reports read ``DATA``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..config import ServeConfig
from ..db import ApiKey, EventRow, JobRow
from .runinfo import details, last_metrics, summary
from .view import NotFound, numeric_alpha, scrub

LIST_LIMIT = 200
EVENT_LIMIT = 300


class ServedView:
    read_only = False

    def __init__(self, config: ServeConfig, db: Session, key: ApiKey) -> None:
        self.config, self.db, self.key = config, db, key
        self.paths = tuple(sorted({str(config.data_dir.resolve()), str(config.data_dir)}
                                  | {str(r) for r in config.model_roots}, key=len, reverse=True))

    def _owned(self, job_id: str) -> JobRow:
        job = self.db.scalar(select(JobRow).where(JobRow.id == job_id, JobRow.owner == self.key.id))
        if job is None:
            raise NotFound(job_id)
        return job

    def run_dir(self, job_id: str) -> Path:
        return self.config.runs_dir / self._owned(job_id).id

    def _row(self, job: JobRow) -> dict[str, Any]:
        path = self.config.runs_dir / job.id
        row = summary(path)
        hp = (job.method.get("dpo") or {}).get("hyperparameters", {}) if isinstance(job.method, dict) else {}
        if row["beta"] is None:
            row["beta"] = hp.get("beta")
        if row["alpha"] is None:
            row["alpha"] = (job.method.get("hdpo_tune") or {}).get("alpha")
        error = job.error.get("message") if isinstance(job.error, dict) else None
        return scrub({**row, "id": job.id, "name": job.suffix or job.id, "where": None, "status": job.status,
                      "model": job.model, "fine_tuned_model": job.fine_tuned_model, "suffix": job.suffix,
                      "metadata": job.job_metadata, "created_at": job.created_at, "finished_at": job.finished_at,
                      "cancel_requested": job.cancel_requested, "error": error or row["error"],
                      "alpha_value": numeric_alpha(row, last_metrics(path, 1))}, self.paths)

    def jobs(self) -> list[dict[str, Any]]:
        rows = self.db.scalars(select(JobRow).where(JobRow.owner == self.key.id)
                               .order_by(JobRow.seq.desc()).limit(LIST_LIMIT))
        return [self._row(j) for j in rows]

    def job(self, job_id: str) -> dict[str, Any]:
        job = self._owned(job_id)
        extra = details(self.config.runs_dir / job.id)
        return {**self._row(job), **scrub(extra, self.paths)}

    def events(self, job_id: str) -> list[dict[str, Any]]:
        self._owned(job_id)
        rows = self.db.scalars(select(EventRow).where(EventRow.job_id == job_id)
                               .order_by(EventRow.seq.desc()).limit(EVENT_LIMIT))
        return [{"level": e.level, "message": scrub(e.message, self.paths), "created_at": e.created_at}
                for e in rows]

    def sweeps(self) -> list[dict[str, Any]]:
        """Jobs created with the same ``metadata.sweep`` form a sweep (``metadata.select`` names its metric)."""
        groups: dict[str, dict[str, Any]] = {}
        for job in self.db.scalars(select(JobRow).where(JobRow.owner == self.key.id)
                                   .order_by(JobRow.seq.desc()).limit(LIST_LIMIT)):
            meta = job.job_metadata or {}
            name = meta.get("sweep")
            if name:
                g = groups.setdefault(name, {"id": f"sweep:{name}", "name": name, "select": meta.get("select"),
                                             "winner": None, "jobs": []})
                g["jobs"].append(job.id)
        return list(groups.values())

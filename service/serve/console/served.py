"""The console's data under ``hdpo-tune serve``: the signed-in key's jobs, from the database and their run
folders. Another key's job is :class:`~.view.NotFound` (the API's 404), and no server path reaches a page:
the model is the name the job was created with, and paths inside reports read ``DATA``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import JsonValue
from sqlalchemy.orm import Session

from .. import store
from ..config import ServeConfig
from ..db import ApiKey, JobRow
from .runinfo import details, last_metrics, summary
from .view import NotFound, numeric_alpha, scrub, scrub_fields

LIST_LIMIT = 200
EVENT_LIMIT = 300


def _field(value: JsonValue, *path: str) -> JsonValue:
    """``value[path[0]][path[1]]...``, or None where the stored JSON has no such object (a page shows what it
    finds, whatever an older job's record holds)."""
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


class ServedView:
    read_only = False

    def __init__(self, config: ServeConfig, db: Session, key: ApiKey) -> None:
        self.config, self.db, self.key = config, db, key
        self.paths = tuple(sorted({str(config.data_dir.resolve()), str(config.data_dir)}
                                  | {str(r) for r in config.model_roots}, key=len, reverse=True))

    def _owned(self, job_id: str) -> JobRow:
        job = store.owned_job(self.db, self.key.id, job_id)
        if job is None:
            raise NotFound(job_id)
        return job

    def run_dir(self, job_id: str) -> Path:
        return self.config.runs_dir / self._owned(job_id).id

    def _row(self, job: JobRow) -> dict[str, Any]:
        path = self.config.runs_dir / job.id
        row = summary(path)
        if row["beta"] is None:
            row["beta"] = _field(job.method, "dpo", "hyperparameters", "beta")
        if row["alpha"] is None:
            row["alpha"] = _field(job.method, "hdpo_tune", "alpha")
        error = job.error.get("message") if isinstance(job.error, dict) else None
        return scrub_fields({**row, "id": job.id, "name": job.suffix or job.id, "where": None, "status": job.status,
                      "model": job.model, "fine_tuned_model": job.fine_tuned_model, "suffix": job.suffix,
                      "metadata": job.job_metadata, "created_at": job.created_at, "finished_at": job.finished_at,
                      "cancel_requested": job.cancel_requested, "error": error or row["error"],
                      "alpha_value": numeric_alpha(row, last_metrics(path, 1))}, self.paths)

    def jobs(self) -> list[dict[str, Any]]:
        return [self._row(j) for j in store.recent_jobs(self.db, self.key.id, LIST_LIMIT)]

    def job(self, job_id: str) -> dict[str, Any]:
        job = self._owned(job_id)
        extra = details(self.config.runs_dir / job.id)
        return {**self._row(job), **scrub_fields(extra, self.paths)}

    def events(self, job_id: str) -> list[dict[str, Any]]:
        self._owned(job_id)
        rows = store.recent_events(self.db, job_id, EVENT_LIMIT)
        return [{"level": e.level, "message": scrub(e.message, self.paths), "created_at": e.created_at}
                for e in rows]

    def sweeps(self) -> list[dict[str, Any]]:
        """Jobs created with the same ``metadata.sweep`` form a sweep (``metadata.select`` names its metric)."""
        groups: dict[str, dict[str, Any]] = {}
        for job in store.recent_jobs(self.db, self.key.id, LIST_LIMIT):
            meta = job.job_metadata or {}
            name = meta.get("sweep")
            if name:
                g = groups.setdefault(name, {"id": f"sweep:{name}", "name": name, "select": meta.get("select"),
                                             "winner": None, "jobs": []})
                g["jobs"].append(job.id)
        return list(groups.values())

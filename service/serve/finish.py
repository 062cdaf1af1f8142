"""A succeeded job: its ``fine_tuned_model`` name, ``trained_tokens`` and the ``step_metrics.csv`` result file."""

from __future__ import annotations

import csv
import io

from sqlalchemy.orm import Session

from hdpo_core.io import atomic_write_text
from hdpo_core.layout import FINAL, MERGED

from . import store
from .config import ServeConfig
from .db import JobRow, new_id
from .progress import all_metrics

CSV_COLUMNS = ("step", "train_loss", "train_rewards_accuracy", "train_reward_margin", "entropy", "ref_entropy",
               "alpha", "learning_rate", "tokens", "tokens_per_s", "valid_loss")
_SOURCE = {"train_loss": "loss", "train_rewards_accuracy": "rewards/accuracies",
           "train_reward_margin": "rewards/margins", "valid_loss": "eval/loss"}


def ft_name(job: JobRow) -> str:
    """``ft:MODEL:hdpo-tune[:SUFFIX]:ID8`` (OpenAI's ``ft:model:org:suffix:id`` shape)."""
    parts = ["ft", job.model, "hdpo-tune", *([job.suffix] if job.suffix else []), job.id.split("-", 1)[1][:8]]
    return ":".join(parts)


def finish_job(config: ServeConfig, db: Session, job: JobRow) -> None:
    """Mark ``job`` succeeded (its process exited 0): fill in the result fields from the run folder."""
    run_dir = config.runs_dir / job.id
    metrics = all_metrics(run_dir)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for rec in metrics:
        writer.writerow(["" if rec.get(_SOURCE.get(c, c)) is None else rec.get(_SOURCE.get(c, c)) for c in CSV_COLUMNS])
    result_id = new_id("file")
    text = buf.getvalue()
    atomic_write_text(config.files_dir / f"{result_id}.csv", text)
    store.add_file(db, file_id=result_id, owner=job.owner, filename="step_metrics.csv", purpose="fine-tune-results",
                   size=len(text.encode()), rows=len(metrics), data_format="csv", commit=False)
    job.result_files = [result_id]
    job.trained_tokens = int(sum(int(r.get("tokens") or 0) for r in metrics))
    job.fine_tuned_model = ft_name(job) if (run_dir / MERGED).is_dir() or (run_dir / FINAL).is_dir() else None
    store.end_job(db, job, "succeeded", "The job has successfully completed")

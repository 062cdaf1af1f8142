"""What both console back ends share: the view interface, the 404, and the comparison of several runs.

A view is built per request: :class:`~.local.LocalView` over run folders (``hdpo-tune ui``) or
:class:`~.served.ServedView` over the caller's jobs in the database (``hdpo-tune serve``). The routes only
call these methods, so the pages are the same in both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from service.sweep import METRIC_HELP, parse_metric


class NotFound(Exception):
    """No such job for this caller (a missing job and another key's job look the same)."""


class View(Protocol):
    read_only: bool

    def run_dir(self, job_id: str) -> Path: ...
    def jobs(self) -> list[dict[str, Any]]: ...
    def job(self, job_id: str) -> dict[str, Any]: ...
    def events(self, job_id: str) -> list[dict[str, Any]]: ...
    def sweeps(self) -> list[dict[str, Any]]: ...


def numeric_alpha(row: dict[str, Any], tail: list[dict[str, Any]]) -> float | None:
    """The alpha a run is plotted at: its fixed alpha, or under ``alpha: auto`` the last alpha it reached."""
    alpha = row.get("alpha")
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return float(alpha)
    last = tail[-1].get("alpha") if tail else None
    return float(last) if isinstance(last, int | float) else None


def compare(view: View, ids: list[str], select: str | None) -> dict[str, Any]:
    """Each run's alpha, eval results and score under the sweep's selection metric; the best one marked.

    The score is :mod:`service.sweep`'s own (the metric `hdpo-tune sweep --select` ranks by), so the console
    marks the run the sweep would have shipped."""
    metric = None
    if select:
        try:
            metric = parse_metric(select)
        except Exception:  # noqa: BLE001 - InputError: a bad metric name is the caller's 400, not a crash
            raise ValueError(f"select: unknown metric '{select[:60]}'; use {METRIC_HELP}") from None
    runs = []
    for job_id in ids:
        job = view.job(job_id)
        results = job.get("eval") if isinstance(job.get("eval"), dict) else None
        score = metric.score(results) if metric is not None and results is not None else math.nan
        runs.append({"id": job_id, "name": job.get("name") or job_id, "alpha": job.get("alpha"),
                     "alpha_value": job.get("alpha_value"), "target_entropy": job.get("target_entropy"),
                     "state": job.get("state"), "eval": results,
                     "score": None if math.isnan(score) else score})
    scores = {str(r["id"]): r["score"] for r in runs if isinstance(r["score"], float)}
    best = max(scores, key=lambda i: scores[i]) if scores else None
    return {"select": select, "best": best, "runs": runs}


def scrub_fields(row: dict[str, Any], secret_paths: tuple[str, ...]) -> dict[str, Any]:
    """:func:`scrub` of each value of ``row``."""
    return {k: scrub(v, secret_paths) for k, v in row.items()}


def scrub(value: Any, secret_paths: tuple[str, ...]) -> Any:
    """``value`` with every server path replaced by ``DATA`` (eval reports record the model folder they read)."""
    if isinstance(value, str):
        for p in secret_paths:
            value = value.replace(p, "DATA")
        return value
    if isinstance(value, dict):
        return {k: scrub(v, secret_paths) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secret_paths) for v in value]
    return value


__all__ = ["NotFound", "View", "compare", "numeric_alpha", "scrub", "scrub_fields"]

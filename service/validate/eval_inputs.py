"""`hdpo-tune validate`'s checks of the eval section's inputs: every bad task row for its verifier and every
lm-eval task name lm-eval does not know, one line each, before any model loads or anything is sampled."""

from __future__ import annotations

import os

from hdpo_core.errors import HdpoError
from service.spec.job import JobSpec

MAX_ROW_PROBLEMS = 20


def eval_task_problems(spec: JobSpec, summary: list[str]) -> list[str]:
    """Problems with ``eval.tasks`` and ``eval.lm_eval.tasks``; what was checked is appended to ``summary``."""
    ev = spec.eval
    if ev is None or not ev.enabled:
        return []
    rows = _task_rows(ev.tasks, ev.verifier, summary) if ev.tasks else []
    return rows + _lm_eval_names(spec)


def _task_rows(path: str, verifier: str, summary: list[str]) -> list[str]:
    from hdpo_core.eval.tasks import load_tasks
    from hdpo_core.eval.verifiers import get_verifier

    rows: list[str] = []
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        return []  # a FIFO, device or socket: the input-kind check has said so once already
    try:
        tasks = load_tasks(path, get_verifier(verifier), problems=rows)
    except HdpoError as exc:
        return [f"eval.tasks: {exc.message}"]
    if len(rows) > MAX_ROW_PROBLEMS:
        rows = rows[:MAX_ROW_PROBLEMS] + [f"eval.tasks: {len(rows) - MAX_ROW_PROBLEMS} more bad rows not listed"]
    summary.append(f"eval tasks: {len(tasks)} usable for verifier '{verifier}'")
    return rows


def _lm_eval_names(spec: JobSpec) -> list[str]:
    """lm-eval task names (their data is loaded by eval itself: validate writes no cache)."""
    lm = spec.eval.lm_eval if spec.eval else None
    if lm is None:
        return []
    from hdpo_core.eval.lm_harness import HarnessSettings, task_manager, unknown_tasks

    settings = HarnessSettings(tasks=tuple(lm.tasks), include_path=lm.include_path)
    try:
        return unknown_tasks(settings, task_manager(settings))
    except HdpoError as exc:
        return [exc.message]

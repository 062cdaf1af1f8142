"""Reading a running job's progress from its run folder: ``status.json`` (stage, state, step) and the new
lines of ``metrics.jsonl`` (one per logged optimizer step), turned into OpenAI-style job events.

The reader keeps a byte offset into ``metrics.jsonl`` and reads only what was appended; when the file was
rewritten (a resumed run drops the lines past its checkpoint) it reads it again from the start. Steps at or
below the last one already reported are skipped, so a restart never repeats an event.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hdpo_core.layout import METRICS
from service.runfolder.record import RunDir

#: metrics copied into an event's data (TRL's names), plus OpenAI's own keys step/total_steps/train_loss/valid_loss
EVENT_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "entropy",
                 "ref_entropy", "alpha", "learning_rate", "grad_norm", "tokens", "tokens_per_s", "eval/loss",
                 "eval/rewards/accuracies", "eval/entropy")


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``status.json`` as ``hdpo-tune`` itself reads it: a ``running`` left by a process that died
    (killed, aborted) reads ``interrupted`` with a line saying so."""
    return RunDir(run_dir).read_status()


def metric_event(rec: dict[str, Any], total_steps: int | None) -> tuple[str, dict[str, Any]]:
    """(message, data) of one metrics line, shaped like OpenAI's ``metrics`` events."""
    data: dict[str, Any] = {"step": rec.get("step"), "total_steps": total_steps, "train_loss": rec.get("loss")}
    if rec.get("eval/loss") is not None:
        data["valid_loss"] = rec["eval/loss"]
    data.update({k: rec[k] for k in EVENT_METRICS if k in rec})
    loss = rec.get("loss")
    of = f"/{total_steps}" if total_steps else ""
    parts = [f"training loss={loss:.4f}" if isinstance(loss, int | float) else "training loss=n/a"]
    for key, label in (("rewards/accuracies", "reward accuracy"), ("entropy", "entropy"),
                       ("tokens_per_s", "tokens/s")):
        if isinstance(rec.get(key), int | float):
            parts.append(f"{label}={rec[key]:.4g}")
    return f"Step {rec.get('step')}{of}: " + ", ".join(parts), data


class MetricsReader:
    """Incremental reader of one run folder's ``metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS
        self._offset = 0
        self._ino: int | None = None
        self._partial = b""

    def new_records(self) -> list[dict[str, Any]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        if st.st_ino != self._ino or st.st_size < self._offset:
            self._ino, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size == self._offset:
            return []
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(st.st_size - self._offset)
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        return step_records(lines)


def all_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete line of ``metrics.jsonl`` (the last record of each step wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    for rec in MetricsReader(run_dir).new_records():
        by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def step_records(lines: Iterable[bytes | str]) -> list[dict[str, Any]]:
    """The ``metrics.jsonl`` lines that are records of a step (a dict with an int ``step``); a torn or foreign
    line is skipped (the trainer may be writing the last one)."""
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out

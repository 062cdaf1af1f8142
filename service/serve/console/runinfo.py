"""What the console shows of one run folder, read from the files a run writes (docs/architecture.md):
``status.json``, ``job.resolved.yaml``, the tail of ``metrics.jsonl``, ``eval/results.json``, the export reports
and the ``checkpoints/`` folders. Every reader tolerates a missing, half-written or foreign file (a running job
writes them as the page reads), and nothing here follows a link out of the run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hdpo_core import layout

from ..progress import read_status, step_records

#: report files shown on a job's page, by the name the page gives them
REPORTS = {"onnx": f"{layout.ONNX}/{layout.EXPORT_REPORT}",
           "quantization": f"{layout.ONNX}/{layout.QUANT_REPORT}",
           "gguf": f"{layout.GGUF}/{layout.EXPORT_REPORT}"}
#: run sub-folders a user can download (as a tar stream)
PARTS = (layout.FINAL, layout.MERGED, layout.ONNX, layout.GGUF, layout.EVAL)
TAIL_BYTES = 16384
SPEC_CACHE = 1024
_specs: dict[tuple[str, int, int], dict[str, Any]] = {}


def inside(run_dir: Path, rel: str) -> Path | None:
    """``run_dir/rel`` when it is a regular file that is no link and does not leave the folder, else None."""
    path = run_dir / rel
    try:
        if any(p.is_symlink() for p in [path, *path.parents] if p != run_dir and run_dir in p.parents):
            return None
        if not path.is_file() or not path.resolve().is_relative_to(run_dir.resolve()):
            return None
    except OSError:
        return None
    return path


def read_json(run_dir: Path, rel: str) -> Any:
    path = inside(run_dir, rel)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_spec(run_dir: Path) -> dict[str, Any]:
    """``job.resolved.yaml`` (or, before the run starts, the served job's ``job.yaml``) as a dict; empty when
    absent or unreadable. Parsed once per file version: the jobs list reads every job's spec on each refresh,
    and a spec changes only when its run starts."""
    path = inside(run_dir, layout.RESOLVED_SPEC) or inside(run_dir, layout.JOB_FILE)
    if path is None:
        return {}
    try:
        st = path.stat()
    except OSError:
        return {}
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _specs:
        if len(_specs) >= SPEC_CACHE:
            _specs.pop(next(iter(_specs)))
        _specs[key] = _parse_spec(path)
    return _specs[key]


def _parse_spec(path: Path) -> dict[str, Any]:
    try:
        from service.spec.yaml_io import load_yaml

        data = load_yaml(path)
    except Exception:  # noqa: BLE001 - a foreign or half-written file shows as "no spec", never a 500
        return {}
    return data if isinstance(data, dict) else {}


def last_metrics(run_dir: Path, window: int = 20) -> list[dict[str, Any]]:
    """The last ``window`` records of ``metrics.jsonl``, read from the file's tail only (a list view must not
    read a 100,000-line file per job)."""
    path = inside(run_dir, layout.METRICS)
    if path is None:
        return []
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            lines = fh.read().split(b"\n")
    except OSError:
        return []
    return step_records(lines[1 if size > TAIL_BYTES else 0:])[-window:]


def _section(spec: dict[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, dict) else {}


def method(spec: dict[str, Any]) -> dict[str, Any]:
    """The H-DPO settings a list row shows: alpha (a number or "auto" with its target), beta, LoRA or full,
    a quantized base (4-bit QLoRA) when the spec has one."""
    hdpo, model, train = _section(spec, "hdpo"), _section(spec, "model"), _section(spec, "train")
    return {"alpha": hdpo.get("alpha"), "target_entropy": hdpo.get("target_entropy"), "beta": hdpo.get("beta"),
            "alpha_schedule": hdpo.get("alpha_schedule"), "lora": spec.get("lora") is not None,
            "quantization": model.get("quantization"), "max_steps": train.get("max_steps"),
            "learning_rate": train.get("learning_rate"), "eval_tasks": bool(_section(spec, "eval").get("tasks"))}


def progress(run_dir: Path) -> dict[str, Any]:
    """Stage, state, step of total, seconds left (mean step time of the last steps) and tokens/s."""
    status = read_status(run_dir) or {}
    tail = last_metrics(run_dir)
    last = tail[-1] if tail else {}
    step = status.get("step") if isinstance(status.get("step"), int) else last.get("step")
    total = status.get("total_steps") if isinstance(status.get("total_steps"), int) else None
    times = [r["step_time_s"] for r in tail if isinstance(r.get("step_time_s"), int | float)]
    eta = None
    if total and isinstance(step, int) and times and status.get("state") == "running":
        eta = max(0.0, (total - step) * sum(times) / len(times))
    return {"stage": status.get("stage"), "state": status.get("state"), "step": step, "total_steps": total,
            "eta_s": eta, "tokens_per_s": last.get("tokens_per_s"), "error": status.get("error"),
            "stages_done": status.get("stages_done") or [], "updated_at": status.get("updated_at")}


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """The complete checkpoints, newest first (the trainer's own listing: real folders, never a link)."""
    out = []
    for folder in reversed(layout.list_checkpoints(run_dir / layout.CHECKPOINTS)):
        try:
            created = int((folder / layout.CHECKPOINT_STATE).lstat().st_mtime)
        except OSError:  # removed by the trainer's pruning since the listing
            continue
        out.append({"step": layout.step_of(folder), "created_at": created})
    return out


def parts(run_dir: Path) -> list[str]:
    return [p for p in PARTS if (run_dir / p).is_dir() and not (run_dir / p).is_symlink()]


def details(run_dir: Path) -> dict[str, Any]:
    """Everything the job page shows besides the curves and the events."""
    reports = {name: read_json(run_dir, rel) for name, rel in REPORTS.items()}
    return {"eval": read_json(run_dir, f"{layout.EVAL}/{layout.EVAL_RESULTS}"),
            "reports": {k: v for k, v in reports.items() if v},
            "checkpoints": checkpoints(run_dir), "parts": parts(run_dir)}


def summary(run_dir: Path) -> dict[str, Any]:
    """A list row: progress and method of the run in ``run_dir``."""
    spec = read_spec(run_dir)
    model = _section(spec, "model").get("name_or_path")
    return {**progress(run_dir), **method(spec), "model": model}

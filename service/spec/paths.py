"""Paths in a job file: relative paths are resolved against the job file's folder, Hub ids are left alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return (len(parts) == 2 and all(parts) and not value.startswith((".", "~"))
            and not value.endswith((".jsonl", ".json", ".parquet")))


def _resolve(value: Any, base: Path, *, kind: Literal["model", "data", "dir"]) -> Any:
    """Make a relative path absolute against the job folder; leave Hub ids (that are not local paths) alone.

    A model id is a Hub id unless it is explicitly a path (``./``, ``../``, ``~``, several slashes) or exists
    next to the job file, so ``gpt2`` and ``org/name`` stay ids. A data id must be ``org/name`` (as
    :mod:`hdpo_core.data` reads it).
    """
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    local = base / p
    explicit = value.startswith((".", "~")) or value.count("/") > 1 or local.exists()
    if kind == "model" and not explicit:
        return value
    if kind == "data" and not explicit and _looks_like_hub_id(value):
        return value
    return str(Path(os.path.normpath(local)))


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    targets: tuple[tuple[str, str, Literal["model", "data", "dir"]], ...] = (
        ("model", "name_or_path", "model"), ("data", "train", "data"), ("data", "eval", "data"),
        ("output", "dir", "dir"), ("train", "ref_cache_dir", "dir"), ("eval", "tasks", "data"),
        ("eval", "eval_pairs", "data"), ("distributed", "accelerate_config", "dir"))
    for section, key, kind in targets:
        sec = out.get(section)
        if isinstance(sec, dict) and key in sec:
            out[section] = {**sec, key: _resolve(sec[key], base, kind=kind)}
    lm = out.get("eval", {}).get("lm_eval") if isinstance(out.get("eval"), dict) else None
    if isinstance(lm, dict) and isinstance(lm.get("include_path"), str):  # custom lm-eval task folder
        out["eval"] = {**out["eval"], "lm_eval": {**lm, "include_path": _resolve(lm["include_path"], base, kind="dir")}}
    return out

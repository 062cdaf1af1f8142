"""Paths as they may appear in what leaves the machine: model cards, ``provenance.json``, ``merge.json``,
eval reports, ``data_info.json``.

These files are shared (pushed to the Hub, downloaded from ``hdpo-tune serve``), so they name a place by what
it is, never by where it lies on the machine that wrote it: a path inside the run folder relative to it
(``final``, ``eval/results.json``), any other absolute path by its last component (a model folder's name is
the model's name, a served upload's file name is its file id). Hub ids and other strings are kept. A
fingerprint (sha256) still pins exactly which data and model were used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def public_path(value: str, run_dir: Path) -> str:
    """``value`` if it is not an absolute path, else its public form (see the module docstring)."""
    if not value or "\n" in value or not os.path.isabs(value):
        return value
    path, root = Path(os.path.normpath(value)), Path(os.path.normpath(os.path.abspath(run_dir)))
    if path == root:
        return "."
    if root in path.parents:
        return path.relative_to(root).as_posix()
    return path.name or value


def public_paths(value: Any, run_dir: Path) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with every absolute-path string made public."""
    if isinstance(value, str):
        return public_path(value, run_dir)
    if isinstance(value, dict):
        return {k: public_paths(v, run_dir) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_paths(v, run_dir) for v in value]
    return value

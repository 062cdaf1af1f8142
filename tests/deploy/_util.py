"""Helpers shared by the deploy tests: repository paths and locating the CLI tools they drive."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def tool(name: str, pip_package: str) -> str:
    """Path of a CLI tool: on PATH or next to this interpreter (a venv's bin/); skip the test if missing."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} not installed (pip install {pip_package})")
    return found


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a (multi-document) YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def broken_copy(doc: dict[str, Any], path: list[str | int], value: object) -> dict[str, Any]:
    """A deep copy of a manifest with the field at ``path`` set to ``value`` (deleted when ``value`` is None):
    the broken-copy tests of every vendored schema take their mutation from here."""
    import copy

    out = copy.deepcopy(doc)
    parent: Any = out
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out

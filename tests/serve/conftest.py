"""Shared fixtures: one data folder with the demo model as the only model root, and one live server for the
API tests (module-scoped, so the suite pays for one start)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="pip install -e .[serve]")
pytest.importorskip("openai", reason="the tests drive the server with the official SDK")

from ._server import REPO, Server, create_key  # noqa: E402


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "demo").symlink_to(REPO / "examples/demo/model")
    return root


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_root: Path) -> Iterator[tuple[Server, str, str]]:
    """(server, key of alice, key of bob); the server has a 1 MiB upload limit."""
    data = tmp_path_factory.mktemp("serve") / "data"
    alice, bob = create_key(data, "alice"), create_key(data, "bob")
    server = Server(data, model_root, extra=("--max-upload-mb", "1")).start()
    yield server, alice, bob
    server.stop()

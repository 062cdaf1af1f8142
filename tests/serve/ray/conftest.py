"""The Ray executor's tests run against a real cluster on this machine, started once for the session.

They skip when Ray is not installed (``pip install -e .[ray]``); ``HDPO_REQUIRE_RAY=1`` (set by .ci/run) turns
that skip into a failure, so CI can never pass them silently.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

if importlib.util.find_spec("ray") is None:
    if os.environ.get("HDPO_REQUIRE_RAY") == "1":
        raise RuntimeError("HDPO_REQUIRE_RAY=1 but Ray is not installed: pip install -e '.[ray]'")
    pytest.skip("Ray is not installed: pip install -e '.[ray]'", allow_module_level=True)

from .._server import REPO, env  # noqa: E402
from ._cluster import Cluster  # noqa: E402

HOOKS = Path(__file__).resolve().parent / "hooks"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head (no CPUs) and two worker nodes of 1 CPU and 1 (fake) GPU each; the job processes they start carry
    the test gates (hooks/sitecustomize.py) under ``cluster.gates``."""
    gates = tmp_path_factory.mktemp("gates")
    node_env = {**env(), "PYTHONPATH": os.pathsep.join([str(HOOKS), str(REPO)]), "HDPO_TEST_GATES": str(gates)}
    c = Cluster(node_env)
    c.gates = gates  # type: ignore[attr-defined]
    try:
        c.start()
        yield c
    finally:
        c.stop()

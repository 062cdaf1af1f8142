"""FSDP2 paths on CPU (``fully_shard`` over gloo, one process, in a subprocess so no process group leaks into
other tests): per-layer sharding, evaluation through the prepared scorer, the reference (frozen copy or
adapter off) and a training micro-batch all equal the unsharded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e  # a subprocess with a gloo process group: `make test-e2e`


def _run(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed" / "_fsdp2_cpu.py"), mode], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp2_shards_per_layer_and_evaluates_through_the_prepared_scorer(mode: str) -> None:
    out = _run(mode)
    assert out["layer_classes"] == ["LlamaDecoderLayer"] and out["units"] == 2  # one unit per decoder layer
    plain, sharded = out["plain"], out["sharded"]
    for key, value in plain["eval"].items():
        assert sharded["eval"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    assert sharded["train_loss_sum"] == pytest.approx(plain["train_loss_sum"], rel=1e-5, abs=1e-6)
    assert sharded["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    # the way train_stage evaluated before: a fresh scorer around the sharded policy cannot run
    assert out["old_way"] != "ran" and "DTensor" in out["old_way"], out["old_way"]

"""deploy/gpu_smoke.sh: shell syntax, and a dry run on CPU that builds the tiny model and validates the job
specs it would run, so the script cannot drift from service/spec/job.py unnoticed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ._util import DEPLOY, REPO

SCRIPT = DEPLOY / "gpu_smoke.sh"


def test_bash_syntax():
    bash = shutil.which("bash") or pytest.skip("bash not installed")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True, timeout=30)


def test_dry_run(tmp_path):
    bash = shutil.which("bash") or pytest.skip("bash not installed")
    env = {**os.environ, "SMOKE_DRY_RUN": "1", "SMOKE_OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path),
           "PYTHON": sys.executable, "SMOKE_HIDDEN": "32", "SMOKE_LAYERS": "2", "SMOKE_PAIRS": "16"}
    env.pop("OUT", None)
    result = subprocess.run([bash, str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "3 job specs validate" in out
    assert "--config_file " + str(DEPLOY / "accelerate" / "fsdp2.yaml") in out
    assert "--no_python hdpo-tune run" in out and "dry run: nothing was run" in out
    summary = (tmp_path / "out" / "smoke_summary.txt").read_text(encoding="utf-8")
    assert "versions: torch" in summary
    assert not list(tmp_path.glob("hdpo-smoke.*")), "dry run left its scratch folder behind"


def test_device_check_script_syntax_and_steps():
    """bench/device_check.sh: the one device call (GPU tests, GPU benchmark, FSDP2/ZeRO-3 check) parses, and names
    the files it runs, so a rename cannot leave it pointing at nothing."""
    bash = shutil.which("bash") or pytest.skip("bash not installed")
    script = REPO / "bench" / "device_check.sh"
    subprocess.run([bash, "-n", str(script)], check=True, timeout=30)
    text = script.read_text(encoding="utf-8")
    for path in ("tests/gpu", "bench/dist_check.py", "bench/run.py", "bench/child.py"):
        assert path in text and (REPO / path).exists(), path

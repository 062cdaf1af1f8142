"""The eval stage and the code sandbox: it says how code ran, and refuses to run it unsandboxed unless the job
opts in with ``eval.allow_unsandboxed_code: true`` (trust issue, point 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import save_tiny
from typer.testing import CliRunner

from hdpo_core.eval import bwrap
from service.cli import app

HDPO_TUNE = Path(sys.executable).parent / "hdpo-tune"
REPO = Path(__file__).resolve().parents[2]
TASK = {"prompt": "def add(a, b):\n", "entry_point": "add", "test": "def check(f):\n    assert f(2, 3) == 5\n"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    save_tiny(root / "model", seed=0)
    (root / "code.jsonl").write_text(json.dumps(TASK) + "\n")
    return root


def _job(ws: Path, **extra: object) -> Path:
    ev = {"tasks": "code.jsonl", "verifier": "code", "n_samples": 2, "max_new_tokens": 4, "temperatures": [1.0],
          "compare_reference": False, **extra}
    job = ws / f"job-{len(extra)}.yaml"
    job.write_text(json.dumps({"model": {"name_or_path": "model"}, "eval": ev}))
    return job


def test_without_bubblewrap_the_console_script_refuses_in_one_line(ws: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", bwrap.BWRAP_ENV: "/nonexistent/bwrap"}
    proc = subprocess.run([str(HDPO_TUNE), "eval", str(ws / "model"), "--job", str(_job(ws)), "--out",
                           str(ws / "refused")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "refusing to run model-written code without a sandbox" in lines[0]
    assert "eval.allow_unsandboxed_code: true" in lines[0] and "bubblewrap" in lines[0]
    assert not (ws / "refused").exists()


def test_opt_in_runs_unsandboxed_with_a_warning(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bwrap.BWRAP_ENV, "/nonexistent/bwrap")
    r = CliRunner().invoke(app, ["eval", str(ws / "model"), "--job", str(_job(ws, allow_unsandboxed_code=True)),
                                 "--out", str(ws / "optin")])
    assert r.exit_code == 0, r.output
    assert "warning: eval: model-written code runs UNSANDBOXED" in r.output
    results = json.loads((ws / "optin" / "results.json").read_text())
    assert results["sandbox"].startswith("UNSANDBOXED")


def test_with_bubblewrap_the_results_say_so(ws: Path) -> None:
    iso, why = bwrap.isolation()
    assert iso is not None, f"bubblewrap unavailable ({why}); apt-get install -y bubblewrap"
    r = CliRunner().invoke(app, ["eval", str(ws / "model"), "--job", str(_job(ws)), "--out", str(ws / "boxed")])
    assert r.exit_code == 0, r.output
    assert "UNSANDBOXED" not in r.output
    assert json.loads((ws / "boxed" / "results.json").read_text())["sandbox"] == iso.describe()


def test_validate_reports_the_missing_sandbox(ws: Path, tiny_pairs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.validate.job import validate_job

    job = ws / "full.yaml"
    spec = {"model": {"name_or_path": "model"}, "data": {"train": str(tiny_pairs)}, "output": {"dir": "run-v"},
            "eval": {"tasks": "code.jsonl", "verifier": "code"}}
    job.write_text(json.dumps(spec))
    assert validate_job(job) == []
    monkeypatch.setenv(bwrap.BWRAP_ENV, "/nonexistent/bwrap")
    problems = validate_job(job)
    assert len(problems) == 1 and "eval.allow_unsandboxed_code: true" in problems[0], problems
    spec["eval"]["allow_unsandboxed_code"] = True
    job.write_text(json.dumps(spec))
    assert validate_job(job) == []

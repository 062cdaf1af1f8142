"""deploy/github/align.yml: valid against GitHub's workflow schema (check-jsonschema's vendored copy, with
the network blocked), and shaped as docs/deploy.md says: manual dispatch, GPU runner, one run per pool,
no default token scopes, HF_TOKEN from a protected environment, artifacts even on failure."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from ._util import DEPLOY, yaml_docs

WORKFLOW = DEPLOY / "github" / "align.yml"
(WF,) = yaml_docs(WORKFLOW)
ON = WF.get("on", WF.get(True))  # PyYAML (YAML 1.1) reads the key `on` as True
(JOB,) = WF["jobs"].values()

# check-jsonschema run in a child interpreter whose sockets all refuse: proof the vendored schema is used.
_OFFLINE = """
import socket, sys
def _refuse(*a, **k):
    raise OSError("network access attempted during an offline schema check")
socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
from check_jsonschema import main
sys.argv = ["check-jsonschema", *sys.argv[1:]]
main()
"""


def check(path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema")
    return subprocess.run([sys.executable, "-c", _OFFLINE, "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_schema_valid_offline():
    result = check(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "network access attempted" not in result.stdout + result.stderr


@pytest.mark.parametrize(("old", "new"), [
    ("runs-on:", "runs_on:"),                     # misspelled key
    ("cancel-in-progress: false", "cancel-in-progress: sometimes"),
    ("contents: read", "contents: admin"),        # not a permission level
])
def test_broken_copy_fails(tmp_path, old, new):
    text = WORKFLOW.read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "align.yml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    result = check(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "network access attempted" not in result.stdout + result.stderr


def test_manual_dispatch_only_with_inputs():
    assert set(ON) == {"workflow_dispatch"}  # no pull_request: a fork's PR never reaches the GPU runner
    inputs = ON["workflow_dispatch"]["inputs"]
    assert inputs["job_yaml"]["type"] == "string" and inputs["job_yaml"]["required"] is True
    assert inputs["push"]["type"] == "boolean" and inputs["push"]["default"] is False


def test_runner_concurrency_permissions_environment():
    assert JOB["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert WF["concurrency"]["group"] and WF["concurrency"]["cancel-in-progress"] is False
    assert WF["permissions"] == {}
    assert JOB["permissions"] == {"contents": "read"}
    assert JOB["environment"] == "hdpo-align"
    assert JOB["timeout-minutes"] > 0


def _steps_using(text: str) -> list[dict]:
    return [s for s in JOB["steps"] if text in str(s)]


def test_token_only_in_the_run_step():
    (step,) = _steps_using("secrets.HF_TOKEN")
    assert step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "HF_TOKEN" not in JOB.get("env", {}) and "HF_TOKEN" not in WF.get("env", {})
    assert "docker run" in step["run"] and "-e HF_TOKEN " in step["run"]  # passed by name, never by value


def test_inputs_never_spliced_into_scripts():
    for step in JOB["steps"]:
        assert not re.search(r"\$\{\{\s*(github\.event\.)?inputs\.", step.get("run", "")), step.get("name")


def test_a_failed_run_fails_the_job():
    (step,) = [s for s in JOB["steps"] if " run \"/work/${JOB_YAML}\"" in s.get("run", "")]
    script = step["run"]
    assert "set -euo pipefail" in script and "|| true" not in script
    assert not step.get("continue-on-error", False)


def test_push_false_runs_every_stage_but_push():
    stage_module = pytest.importorskip("service.stages.registry")
    (step,) = _steps_using("stage_flags=(")
    line = next(ln for ln in step["run"].splitlines() if "stage_flags=(--only" in ln)
    words = shlex.split(line.split("(", 1)[1].rstrip(")"))
    stages = words[1::2]
    assert words[0::2] == ["--only"] * len(stages)
    assert set(stages) == set(stage_module.NAMES) - {"push"}


def test_artifacts_uploaded_even_on_failure():
    (step,) = [s for s in JOB["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
    assert step["if"] == "always()"
    paths = step["with"]["path"]
    assert "status.json" in paths and "metrics.jsonl" in paths

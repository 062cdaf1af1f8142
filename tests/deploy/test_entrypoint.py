"""The container entrypoint's command line, without Docker: `hdpo-tune <job.yaml>` means `hdpo-tune run <job.yaml>`."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from service import cli
from service.cli import _with_default_command


@pytest.mark.parametrize(("argv", "expected"), [
    (["/work/job.yaml"], ["run", "/work/job.yaml"]),
    (["job.yml"], ["run", "job.yml"]),
    (["--debug", "/work/job.yaml"], ["--debug", "run", "/work/job.yaml"]),
    (["/work/job.yaml", "--force"], ["run", "/work/job.yaml", "--force"]),
    (["run", "/work/job.yaml"], ["run", "/work/job.yaml"]),
    (["validate", "/work/job.yaml"], ["validate", "/work/job.yaml"]),
    (["--debug", "validate", "job.yaml"], ["--debug", "validate", "job.yaml"]),
    (["--help"], ["--help"]),  # the image's CMD
    ([], []),
    (["merge", "runs/x"], ["merge", "runs/x"]),
])
def test_default_command(argv, expected):
    assert _with_default_command(argv) == expected


def test_input_is_not_mutated():
    argv = ["/work/job.yaml"]
    _with_default_command(argv)
    assert argv == ["/work/job.yaml"]


def _commands() -> dict:
    return typer.main.get_command(cli.app).commands


def test_image_cmd_prints_help():
    result = CliRunner().invoke(cli.app, _with_default_command(["--help"]), prog_name="hdpo-tune")
    assert result.exit_code == 0
    assert "run" in result.output and "validate" in result.output


@pytest.mark.parametrize("prefix", [[], ["--debug"]])
def test_docker_style_args_reach_run(tmp_path, prefix):
    """`docker run hdpo-tune [--debug] /work/job.yaml` ends in `run`, which reports the missing file (exit 2)."""
    if "run" not in _commands():
        pytest.skip("the run command is not registered yet")
    missing = tmp_path / "job.yaml"
    result = CliRunner().invoke(cli.app, _with_default_command([*prefix, str(missing)]), prog_name="hdpo-tune")
    # --debug adds the traceback but keeps the exit code: 2 (bad input) either way
    assert result.exit_code == 2, result.output
    assert "job file not found" in result.output
    assert ("Traceback" in result.output) == bool(prefix), result.output

"""A run folder that cannot be created is bad input: one line naming output.dir and the fix, exit 2.

In a container this is a read-only `-v` mount or a folder the `--user` uid may not write (both checked through
the real image in tests/container). Here, as any user (root included), the parent is a regular file."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from tests.reliability._jobs import write_job


def test_a_run_folder_that_cannot_be_created_is_one_line_exit_2(tmp_path: Path, tiny_model_dir: Path,
                                                                  tiny_pairs: Path) -> None:
    (tmp_path / "blocker").write_text("not a folder", encoding="utf-8")
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, out="blocker/run")
    result = CliRunner().invoke(app, ["run", str(job)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: output.dir: cannot write the run folder "), lines
    assert "blocker/run" in lines[0] and "Not a directory" in lines[0] and "Traceback" not in result.output
    assert (tmp_path / "blocker").read_text(encoding="utf-8") == "not a folder"

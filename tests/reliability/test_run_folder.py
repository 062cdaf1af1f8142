"""A run folder belongs to hdpo-tune (issue 13, points 1 and 2): refused folders, inputs that would be
overwritten, wrong roots, one run per folder by an OS lock, and ``--force`` that removes only what hdpo-tune
wrote. Each case runs the real console script on real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.runfolder.ownership import LOCK, MARKER
from tests.reliability._jobs import snapshot, status, write_job
from tests.reliability._proc import ROOT, env, hdpo, one_error


def _marked(folder: Path) -> Path:
    """A folder carrying the marker hdpo-tune writes when it creates a run folder."""
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"created_by": "hdpo-tune", "written": [MARKER]}))
    return folder


def test_a_folder_with_other_files_is_refused_and_left_untouched(tmp_path: Path, tiny_model_dir: Path,
                                                                  tiny_pairs: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("prefs.jsonl", "metrics.jsonl", "final/notes.txt", "checkpoints/mine.bin", "tensorboard/x"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(name)
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, out=str(data))
    before = snapshot(data)
    for extra in ((), ("--force",)):
        proc = hdpo("run", str(job), *extra)
        assert proc.returncode == 2, proc.stderr
        line = one_error(proc)
        assert str(data) in line and "did not write" in line and "new or empty folder" in line, line
        assert snapshot(data) == before


@pytest.mark.parametrize("where", ["/", "home", "/etc"])
def test_obviously_wrong_roots_are_refused(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path,
                                           where: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = str(home) if where == "home" else where
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, out=out)
    proc = hdpo("run", str(job), HOME=str(home))
    assert proc.returncode == 2, proc.stderr
    assert "system or home folder" in one_error(proc)
    assert sorted(p.name for p in home.iterdir()) == []


@pytest.mark.parametrize("shape", ["file", "under-a-file"])
def test_output_dir_that_is_or_lies_under_a_file(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path,
                                                 shape: str) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("mine")
    out = blocker if shape == "file" else blocker / "run"
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, out=str(out))
    proc = hdpo("run", str(job))
    assert proc.returncode == 2, proc.stderr
    line = one_error(proc)
    assert str(blocker) in line and ("is a file" in line or "Not a directory" in line), line
    assert blocker.read_text() == "mine"


def test_an_input_where_the_run_writes_is_refused(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    run = _marked(tmp_path / "run")
    data = run / "metrics.jsonl"  # training data where the run would write its metrics
    data.write_bytes(tiny_pairs.read_bytes())
    job = write_job(tmp_path, tiny_model_dir, data, out="run")
    proc = hdpo("run", str(job))
    assert proc.returncode == 2, proc.stderr
    line = one_error(proc)
    assert "data.train" in line and "metrics.jsonl" in line and "move the input" in line, line
    assert data.read_bytes() == tiny_pairs.read_bytes()
    # the run folder itself as an input (the model folder) is refused too
    job = write_job(tmp_path, run, tiny_pairs, out="run", name="job2.yaml")
    proc = hdpo("run", str(job))
    assert proc.returncode == 2 and "is the run folder itself" in one_error(proc)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only tmpfs needs root")
def test_read_only_file_system_is_one_line(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        job = write_job(tmp_path, tiny_model_dir, tiny_pairs, out=str(mnt / "run"))
        proc = hdpo("run", str(job))
        assert proc.returncode == 2, proc.stderr
        line = one_error(proc)
        assert str(mnt / "run") in line and "Read-only file system" in line, line
    finally:
        subprocess.run(["umount", str(mnt)])


def _wait_for_training(run: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if status(run).get("step"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("the first run never reached a training step")


def test_one_run_per_folder_and_sigkill_leaves_no_stale_lock(tmp_path: Path, tiny_model_dir: Path,
                                                             tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=400, save_every=1)
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "service.cli", "run", str(job)], env=env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_training(run, first)
        second = hdpo("run", str(job))
        assert second.returncode == 2, second.stderr
        line = one_error(second)
        assert f"in use by pid {first.pid}" in line and str(run) in line, line
        assert status(run)["state"] == "running"  # polling status.json works while the lock is held
        assert first.poll() is None  # the refused run changed nothing for the running one
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert (run / LOCK).exists()  # the file stays; the lock died with the process
    short = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=400, save_every=1, name="job.yaml")
    probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from service.runfolder.ownership import RunLock; RunLock(Path(sys.argv[1])).acquire(); print('ok')",
                            str(run)], env=env(), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr
    assert short.exists()


def test_force_removes_only_what_hdpo_tune_wrote(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=2, save_every=1)
    run = tmp_path / "run"
    assert hdpo("run", str(job)).returncode == 0
    (run / "notes.txt").write_text("my notes")
    (run / "mine").mkdir()
    (run / "mine" / "data.bin").write_bytes(b"\x00" * 10)
    written = set(json.loads((run / MARKER).read_text())["written"])
    assert {"checkpoints", "final", "metrics.jsonl", "status.json", "job.resolved.yaml"} <= written
    assert "notes.txt" not in written and "mine" not in written
    proc = hdpo("run", str(job), "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "notes.txt").read_text() == "my notes" and (run / "mine" / "data.bin").stat().st_size == 10
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # trained again from scratch, not appended

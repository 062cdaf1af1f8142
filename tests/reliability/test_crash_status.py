"""A process that dies from a signal or an abort cannot write its end (issue 23, section 3): ``status.json``
still says ``running``. Every reader (``RunDir.read_status``, ``hdpo-tune validate``, ``hdpo-tune serve``'s
scheduler) must see it as interrupted, because the run's lock is free; the next command that takes the
lock rewrites the file. Real ``hdpo-tune run`` processes, killed with a real SIGABRT and SIGKILL."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from pathlib import Path

from service.runfolder import ownership
from service.runfolder.record import RunDir
from service.serve.progress import read_status as serve_read_status
from tests.reliability._jobs import run_cli, write_job
from tests.reliability._proc import HDPO_TUNE, env


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _raw(run: Path) -> dict[str, object]:
    return json.loads((run / "status.json").read_text(encoding="utf-8"))


def _run_until_running(job: Path, run: Path) -> subprocess.Popen[bytes]:
    """Start ``hdpo-tune run``; return once its own ``running`` is in status.json (the train stage began)."""
    proc = subprocess.Popen([str(HDPO_TUNE), "run", str(job)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_no_core_dump)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it was killed"
        try:
            status = _raw(run)
            if status.get("pid") == proc.pid and status.get("state") == "running":
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError("the run never wrote its status")


def test_a_killed_or_aborted_run_reads_interrupted(tmp_path: Path, tiny_model_dir: Path, tiny_pairs: Path) -> None:
    job = write_job(tmp_path, tiny_model_dir, tiny_pairs, steps=10_000, save_every=1)
    run = tmp_path / "run"
    for sig in (signal.SIGABRT, signal.SIGKILL):
        proc = _run_until_running(job, run)
        proc.send_signal(sig)
        proc.wait(timeout=120)
        assert proc.returncode == -sig
        raw = _raw(run)
        assert raw["state"] == "running" and raw["pid"] == proc.pid  # what the dead process left behind
        seen = RunDir(run).read_status()
        assert seen is not None and seen["state"] == "interrupted" and seen["stage"] == raw["stage"]
        assert f"pid {proc.pid}" in seen["error"] and "killed by a signal" in seen["error"], seen["error"]
        assert serve_read_status(run) == seen  # the jobs service reads the same
        report = run_cli("validate", str(job))
        assert "train: interrupted" in report.output, report.output
    ownership.open_existing(run)  # the next command takes the lock and rewrites the file
    try:
        RunDir(run).settle_dead_run()
        raw = _raw(run)
        assert raw["state"] == "interrupted" and f"pid {proc.pid}" in str(raw["error"]), raw
        assert RunDir(run).read_status() == raw
    finally:
        ownership.RunLock(run).release()


def test_a_live_run_reads_running(tmp_path: Path) -> None:
    """The lock held (here by this process) keeps ``running`` as it is: the probe never takes the lock."""
    run = ownership.open_folder(tmp_path / "run")
    try:
        RunDir(run).write_status("train", "running", step=3)
        assert RunDir(run).read_status()["state"] == "running"  # type: ignore[index]
        assert serve_read_status(run)["state"] == "running"  # type: ignore[index]
    finally:
        ownership.RunLock(run).release()
    assert RunDir(run).read_status()["state"] == "interrupted"  # type: ignore[index]

"""Nothing lost on a crash: SIGKILL the server mid-job and start it again.

The job (submitted through the native spec endpoint) resumes from its last checkpoint in a second
`hdpo-tune run` attempt and finishes once: every step is in metrics.jsonl and in the events exactly once, one
"completed" event; the job queued behind it is still queued after the restart; the run folder was never held
by two processes (the second attempt starts only after the first has exited).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from ._server import TINY, Server, create_key, demo_rows, env

HOOKS = Path(__file__).resolve().parents[1] / "distributed" / "audit"  # test-only sitecustomize (stall hooks)


@pytest.fixture()
def server(tmp_path, model_root):  # type: ignore[no-untyped-def]
    """A server whose job processes stall once, after the metrics of step 2, until the server dies (their
    parent changes): the SIGKILL then lands mid-job however fast or slow this machine is, never after the end."""
    data = tmp_path / "data"
    key = create_key(data, "ci")
    stall = f"2:{tmp_path / 'stalled-once'}"
    srv = Server(data, model_root, extra_env={"HDPO_STALL_UNTIL_ORPHANED": stall,
                                              "PYTHONPATH": os.pathsep.join([str(HOOKS), env()["PYTHONPATH"]])}).start()
    yield srv, key, tmp_path / "stalled-once"
    srv.stop()


def _pids_holding(run_dir) -> list[int]:  # type: ignore[no-untyped-def]
    """Processes whose command line is `hdpo-tune run job.yaml` with this run folder as their cwd."""
    import os
    from pathlib import Path

    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == run_dir and b"run\x00job.yaml" in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def test_sigkill_mid_job_resumes_from_checkpoint_and_finishes_once(server):
    srv, key, stalled = server
    c = srv.client(key)
    f = c.files.create(file=("prefs.jsonl", demo_rows(16)), purpose="fine-tune")
    spec = {"model": {"name_or_path": "demo"}, "data": {"train": f.id, **TINY["data"]}, "lora": TINY["lora"],
            "hdpo": {"alpha": 0.8, "beta": 1.0},
            "train": {**TINY["train"], "max_steps": 6, "batch_size": 2, "learning_rate": 3e-5}}
    job = c.post("/hdpo/jobs", body={"spec": spec, "suffix": "crash"}, cast_to=dict)
    behind = c.fine_tuning.jobs.create(model="demo", training_file=f.id, extra_body={"hdpo_tune": TINY})
    run_dir = srv.data / "runs" / job["id"]

    deadline = time.monotonic() + 600
    while not stalled.exists() and time.monotonic() < deadline:  # step 2's metrics are written, its job waits
        time.sleep(0.2)
    assert stalled.exists(), (run_dir / "job.log").read_text()[-3000:] if (run_dir / "job.log").exists() else ""
    srv.kill()  # SIGKILL: no shutdown code runs in the server
    srv.start()
    c = srv.client(key)
    assert c.fine_tuning.jobs.retrieve(behind.id).status == "queued"  # queued stays queued

    seen_two = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        seen_two |= len(_pids_holding(run_dir)) > 1
        if c.fine_tuning.jobs.retrieve(job["id"]).status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    done = c.fine_tuning.jobs.retrieve(job["id"])
    assert done.status == "succeeded", done.error
    assert not seen_two  # never two processes on one run folder
    assert done.hdpo_tune["attempts"] == 2

    log = (run_dir / "job.log").read_text()
    assert log.count(f"--- {job['id']} attempt") == 2
    resumed = re.search(r"resuming from step-\d+ \(step (\d+)\)", log.split("attempt 2", 1)[1])
    assert resumed is not None and int(resumed.group(1)) >= 2  # from the last checkpoint, not from scratch
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    events = list(c.fine_tuning.jobs.list_events(job["id"], limit=200))
    metric_steps = sorted(e.data["step"] for e in events if e.type == "metrics")
    assert metric_steps == sorted(set(metric_steps)) and metric_steps[-1] == 6
    assert sum(e.message == "The job has successfully completed" for e in events) == 1
    assert any(e.message.startswith("Resuming after a server restart") for e in events)
    c.fine_tuning.jobs.cancel(behind.id)

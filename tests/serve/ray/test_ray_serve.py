"""`hdpo-tune serve --executor ray` on a real three-node Ray cluster (tests/serve/ray/_cluster.py), driven with the
official `openai` SDK like the other serve tests.

Each worker node has 1 CPU and 1 GPU (faked through Ray's resource count), so a one-process job fits anywhere, a
two-process job needs both nodes, and a three-process job can never run. The last test kills a worker node, so
it stays last in this module.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from .._server import TINY, Server, create_key, demo_rows, wait_for
from ._cluster import Cluster

SPEC = {**TINY, "train": {**TINY["train"], "batch_size": 4, "micro_batch_size": 2}}
#: the jobs that only need training skip the merge stage (test time)
BARE = {**SPEC, "merge": {"enabled": False}}
PLACED = re.compile(r"rank (\d) on \S+ \(node (\w+)\)")
#: a three-node cluster and real jobs: `make test-e2e` (CI) runs these, `make test` leaves them out
pytestmark = pytest.mark.e2e


def serve(cluster: Cluster, data: Path, model_root: Path) -> Server:
    return Server(data, model_root, extra=("--executor", "ray", "--ray-address", cluster.address,
                                           "--limit", "max_processes=3"))


def hold(cluster: Cluster, seed: int, *steps: int) -> Path:
    gates: Path = cluster.gates  # type: ignore[attr-defined]
    (gates / f"seed{seed}.hold").write_text(" ".join(map(str, steps)))
    return gates


def reached(gates: Path, job_id: str, step: int, timeout: float = 300) -> int:
    """Wait until the job's process stopped at the gate of ``step``; returns that process's pid."""
    marker, deadline = gates / f"{job_id}.{step}.reached", time.monotonic() + timeout
    while not marker.exists():
        assert time.monotonic() < deadline, f"{job_id} never reached step {step}"
        time.sleep(0.2)
    return int(marker.read_text())


def messages(c, job_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.message for e in c.fine_tuning.jobs.list_events(job_id, limit=200)][::-1]  # oldest first


def placements(msgs: list[str]) -> list[dict[int, str]]:
    return [{int(r): n for r, n in PLACED.findall(m)} for m in msgs if m.startswith("Placed by Ray")]


def losses(run: Path) -> torch.Tensor:
    return torch.tensor([json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()],
                        dtype=torch.float64)


def release(c, gates: Path) -> None:  # type: ignore[no-untyped-def]
    """After a failure: open every gate and cancel what still runs, so nothing is left on the cluster."""
    for marker in gates.glob("*.reached"):
        marker.with_suffix(".go").touch()
    for job in c.fine_tuning.jobs.list(limit=100):
        if job.status in ("queued", "running"):
            c.fine_tuning.jobs.cancel(job.id)
            try:
                wait_for(c, job.id, timeout=120)
            except AssertionError:
                pass  # the test's own failure is the one to report; the cluster is torn down anyway


def test_jobs_placed_queued_cancelled_refused_and_two_nodes_equal_one(cluster, tmp_path, model_root):
    """A one-process job and a gated one fill both nodes; a two-process job waits in Ray's queue, then runs
    across the two nodes and matches the one-process job's losses; a three-process job fails at once with Ray's
    reason; the gated job is cancelled mid-training."""
    data = tmp_path / "data"
    key = create_key(data, "ci")
    srv = serve(cluster, data, model_root).start()
    try:
        c = srv.client(key)
        f = c.files.create(file=("prefs.jsonl", demo_rows(16)), purpose="fine-tune")
        gates = hold(cluster, 11, 1)

        def create(spec: dict, seed: int, suffix: str):  # type: ignore[no-untyped-def]
            return c.fine_tuning.jobs.create(model="demo", training_file=f.id, seed=seed, suffix=suffix,
                                             extra_body={"hdpo_tune": spec})

        one = create(SPEC, 3, "one")
        gated = create({**BARE, "train": {**SPEC["train"], "max_steps": 50}}, 11, "gated")
        two = create({**BARE, "distributed": {"num_processes": 2}}, 3, "two")
        three = create({**BARE, "distributed": {"num_processes": 3}}, 3, "three")

        refused = wait_for(c, three.id, timeout=120)
        assert refused.status == "failed" and refused.error.code == "no_resources_fit"
        assert "no set of nodes could ever run this job: it asks for 3 process(es)" in refused.error.message
        assert any("no set of nodes could ever run" in m for m in messages(c, three.id))

        reached(gates, gated.id, 1)
        c.fine_tuning.jobs.cancel(gated.id)
        wait_for(c, gated.id, until=lambda j: any(m.startswith("Cancellation requested: SIGTERM sent") for m in
                                                  messages(c, gated.id)), timeout=60)
        (gates / f"{gated.id}.1.go").touch()  # the SIGTERM is acted on at the end of the step
        done = wait_for(c, gated.id, timeout=300)
        assert done.status == "cancelled"
        status = json.loads((data / "runs" / gated.id / "status.json").read_text())
        assert status["state"] == "interrupted"  # SIGTERM reached the process on its node: it checkpointed

        a = wait_for(c, one.id, timeout=600)
        b = wait_for(c, two.id, timeout=600)
        assert a.status == "succeeded", a.error
        assert b.status == "succeeded", b.error
        assert a.fine_tuned_model == f"ft:demo:hdpo-tune:one:{a.id[6:14]}"
        assert [k.step_number for k in c.fine_tuning.jobs.checkpoints.list(a.id)][0] == 4
        ev = messages(c, one.id)
        assert sorted(e.data["step"] for e in c.fine_tuning.jobs.list_events(a.id, limit=100)
                      if e.type == "metrics") == [1, 2, 3, 4]
        assert ev[-1] == "The job has successfully completed" and len(placements(ev)) == 1

        ev = messages(c, two.id)
        assert any(m.startswith("Waiting in Ray's queue for 2 process(es)") for m in ev), ev
        (where,) = placements(ev)
        assert set(where) == {0, 1} and where[0] != where[1]  # one process on each node
        la, lb = losses(data / "runs" / one.id), losses(data / "runs" / two.id)
        print("Ray: 1 process vs 2 processes on two nodes, max |loss diff| per step:", float((la - lb).abs().max()))
        assert len(la) == len(lb) == 4
        torch.testing.assert_close(lb, la, atol=1e-4, rtol=0)
    except BaseException:
        release(srv.client(key), cluster.gates)  # type: ignore[attr-defined]
        raise
    finally:
        srv.stop()


def test_server_restart_reattaches_and_a_killed_node_resumes_elsewhere(cluster, tmp_path, model_root):
    """The server is SIGKILLed mid-job and started again: it re-attaches (same attempt). Then the node running
    the job is SIGKILLed: the job resumes from its checkpoint on the other node and finishes exactly once."""
    data = tmp_path / "data"
    key = create_key(data, "ci")
    srv = serve(cluster, data, model_root).start()
    try:
        c = srv.client(key)
        f = c.files.create(file=("prefs.jsonl", demo_rows(16)), purpose="fine-tune")
        gates = hold(cluster, 21, 2, 4)
        job = c.fine_tuning.jobs.create(model="demo", training_file=f.id, seed=21, extra_body={"hdpo_tune": {
            **BARE, "train": {**SPEC["train"], "max_steps": 6}}})
        run = data / "runs" / job.id

        reached(gates, job.id, 2)
        srv.kill()
        srv.start()
        c = srv.client(key)
        wait_for(c, job.id, until=lambda j: any(m.startswith("Re-attached") for m in messages(c, job.id)),
                 timeout=120)
        (gates / f"{job.id}.2.go").touch()

        pid = reached(gates, job.id, 4)
        node = cluster.node_of(pid)
        assert node is not None, "the job process runs on no worker node"
        node.kill()  # the machine dies: raylet, Ray workers, the job process
        killed = time.monotonic()
        wait_for(c, job.id, until=lambda j: any(m.startswith("Lost the job's process") for m in messages(c, job.id)),
                 timeout=300)
        print(f"Ray: node SIGKILLed -> 'Lost' event in {time.monotonic() - killed:.1f} s")

        done = wait_for(c, job.id, timeout=600)
        assert done.status == "succeeded", done.error
        assert done.hdpo_tune["attempts"] == 2  # the restart re-attached; only the lost node cost an attempt
        ev = messages(c, job.id)
        assert sum(m.startswith("Re-attached to attempt 1") for m in ev) == 1
        # which Ray notices first, the dead raylet or the dead actor worker, is a race: either is the node's loss
        lost = [m for m in ev if m.startswith("Lost the job's process: ")]
        print("Ray:", lost)
        assert len(lost) == 1 and lost[0].endswith("; it resumes from its last checkpoint"), ev
        assert any(m.startswith("Resuming after its process was lost") for m in ev)
        first, second = placements(ev)
        assert first[0] != second[0]  # the second attempt ran on the other node
        assert sum(m == "The job has successfully completed" for m in ev) == 1

        log = (run / "job.log").read_text()
        resumed = re.search(r"resuming from step-\d+ \(step (\d+)\)", log.split("attempt 2", 1)[1])
        assert resumed is not None and int(resumed.group(1)) >= 3, log[-3000:]  # from the checkpoint, not step 0
        assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
        steps = sorted(e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=200) if e.type == "metrics")
        assert steps == [1, 2, 3, 4, 5, 6]
    except BaseException:
        if srv.proc is not None and srv.proc.poll() is None:
            release(srv.client(key), cluster.gates)  # type: ignore[attr-defined]
        raise
    finally:
        srv.stop()

"""The Ray executor's decisions that need no cluster: which requests can never fit, what each process asks
for, and the one line each bad set-up gives (a real server started against nothing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hdpo_core.errors import InputError
from service.serve.ray_connect import connection_error, job_bundle, node_problem, parse_resources
from service.serve.ray_executor import actor_options, lost_reason, unfit_reason
from service.serve.ray_runner import Probe

from .._server import HDPO_TUNE, env, free_port

NODE = {"CPU": 1.0, "GPU": 1.0, "memory": 8e9}


def test_unfit_counts_whole_processes_per_node():
    gpu = {"CPU": 1.0, "GPU": 1.0}
    assert unfit_reason(gpu, 2, [NODE, NODE]) is None
    assert unfit_reason(gpu, 2, [{"CPU": 4.0, "GPU": 2.0}]) is None  # both on one node
    why = unfit_reason(gpu, 3, [NODE, NODE, {"CPU": 8.0}])  # a CPU-only node holds no GPU process
    assert why is not None and "asks for 3 process(es) of {CPU: 1, GPU: 1}" in why and "hold 2" in why
    assert unfit_reason({"CPU": 2.0}, 1, [NODE, NODE]) is not None  # no node has 2 CPUs: half a node each is no use
    assert unfit_reason({"CPU": 1.0, "w9": 1.0}, 1, [NODE]) is not None  # a custom resource nobody has
    assert unfit_reason(gpu, 1, []) is not None


def test_bundle_and_actor_options():
    assert job_bundle({}, {"CPU": 8.0}) == {"CPU": 1.0}
    assert job_bundle({}, {"CPU": 8.0, "GPU": 2.0}) == {"CPU": 1.0, "GPU": 1.0}
    assert job_bundle({"CPU": 4.0, "GPU": 0.0}, {"GPU": 2.0}) == {"CPU": 4.0}  # the administrator's word wins
    assert actor_options({"CPU": 2.0, "GPU": 1.0, "memory": 1e9, "a100": 1.0}) == {
        "num_cpus": 2.0, "num_gpus": 1.0, "memory": 1e9, "resources": {"a100": 1.0}}
    assert parse_resources(["CPU=2", "memory=16e9", "GPU=1"]) == (("CPU", 2.0), ("memory", 16e9), ("GPU", 1.0))
    for bad in ("CPU", "CPU=-1", "=3", "GPU=nan", "GPU=inf", "GPU=two"):
        with pytest.raises(InputError, match=r"--ray-resources"):
            parse_resources([bad])


def test_ray_errors_become_one_line():
    mismatch = RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.7\n"
                            "This process on node 10.0.0.2 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n")
    msg = connection_error("head:6379", mismatch).message
    assert msg == ("--ray-address head:6379: the cluster runs Ray 2.59.0 (Python 3.11.7) but this server has Ray "
                   "2.60.0 (Python 3.11.7); install the same Ray and Python on the server and every node")
    assert "\n" not in connection_error(None, ConnectionError("no cluster\nmore")).message
    no_node = connection_error("head:6379", RuntimeError("Could not find any running Ray instance. Please specify"))
    assert "this machine runs no Ray node" in no_node.message and "ray://HEAD:10001" in no_node.message
    died = "The actor died unexpectedly before finishing this task.\n\tclass_name: JobRunner\nThe actor died because " \
           "its node has died. Node Id: abc"
    assert lost_reason(RuntimeError(died)) == "its Ray node died"
    assert lost_reason(RuntimeError("The actor died unexpectedly.\nmore")) == "The actor died unexpectedly"
    worker = ("The actor died unexpectedly before finishing this task.\n\tclass_name: JobRunner\n\tThe actor is dead "
              "because its worker process has died. Worker exit type: SYSTEM_ERROR")
    assert lost_reason(RuntimeError(worker)) == ("The actor is dead because its worker process has died. Worker exit "
                                                 "type: SYSTEM_ERROR")


def test_node_that_cannot_see_or_write_the_data_folder_or_runs_another_version(tmp_path: Path):
    ok = Probe(address="10.0.0.7", sees=True, writable=True, version="0.1.0")
    assert node_problem("abcdef123456", ok, tmp_path, "0.1.0") is None
    blind = node_problem("abcdef123456", Probe("10.0.0.7", False, False, "0.1.0"), tmp_path, "0.1.0")
    assert blind == (f"--data: Ray node 10.0.0.7 (abcdef12) cannot see the data folder {tmp_path}; mount the "
                     "shared folder (NFS, a ReadWriteMany volume) at the same path on every node")
    assert "cannot write" in (node_problem("ab", Probe("h", True, False, "0.1.0"), tmp_path, "0.1.0") or "")
    assert "has hdpo-tune 0.0.9, this server 0.1.0" in (node_problem("ab", Probe("h", True, True, "0.0.9"), tmp_path,
                                                                     "0.1.0") or "")


def test_an_address_that_does_not_answer_is_one_line_exit_2(tmp_path: Path):
    port = free_port()  # nothing listens there
    res = subprocess.run([HDPO_TUNE, "serve", "--data", str(tmp_path / "data"), "--executor", "ray",
                          "--ray-address", f"127.0.0.1:{port}"], env=env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there (Connection "
                                  "refused); start its head (`ray start --head`) or fix the address")
    res = subprocess.run([HDPO_TUNE, "serve", "--data", str(tmp_path / "data"), "--ray-address", "h:1"], env=env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == "error: --ray-address/--ray-resources: only with --executor ray"


class _Process:
    """A job process that is lost with its node at every poll (``lost``), or runs until told its exit code."""

    def __init__(self, lost: bool) -> None:
        self.pid, self.error, self.lost, self.code = None, None, lost, None

    def notes(self) -> list[tuple[str, str]]:
        return [("info", "Placed by Ray: rank 0 on n1 (node abc)")]

    def poll(self) -> int | None:
        if self.lost:
            from service.serve.executor import Lost

            raise Lost("its Ray node died")
        return self.code

    def terminate(self) -> None:
        self.code = 130


class _Executor:
    """keeps_jobs like the Ray executor: ``ftjob-attached`` still runs from before, ``ftjob-unfit`` can never run,
    ``ftjob-lost`` loses its node every time."""

    keeps_jobs = True

    def __init__(self) -> None:
        self.starts: list[str] = []

    def attach(self, job_id: str, run_dir: Path) -> _Process | None:
        return _Process(lost=False) if job_id == "ftjob-attached" else None

    def busy(self, run_dir: Path) -> bool:
        return False

    def start(self, job_id: str, run_dir: Path, *, attempt: int, slot: int) -> _Process:
        from service.serve.executor import CannotRun

        if job_id == "ftjob-unfit":
            raise CannotRun("Ray: no set of nodes could ever run this job", code="no_resources_fit")
        self.starts.append(job_id)
        return _Process(lost=job_id == "ftjob-lost")


def test_scheduler_reattaches_refuses_and_gives_up_after_repeated_node_losses(tmp_path: Path):
    from service.serve.config import ServeConfig
    from service.serve.db import ApiKey, EventRow, JobRow, make_engine, session_factory
    from service.serve.scheduler import MAX_LOSSES, Scheduler
    from service.serve.store import job_by_id

    config = ServeConfig(data_dir=tmp_path, workers=4, host_id="here", executor="ray")
    sessions = session_factory(make_engine(config.database_url))
    common = {"owner": "k", "model": "demo", "training_file": "file-x", "seed": 0, "method": {}, "request": {},
              "created_at": 1, "result_files": [], "last_metrics_step": 0, "last_stage": "", "stages_reported": [],
              "cancel_requested": False}
    with sessions() as db:
        db.add(ApiKey(id="k", name="k", key_hash="h", created_at=1, revoked=False))
        db.add(JobRow(id="ftjob-attached", status="running", host=None, attempts=1, **common))
        db.add(JobRow(id="ftjob-unfit", status="queued", attempts=0, **common))
        db.add(JobRow(id="ftjob-lost", status="queued", attempts=0, **common))
        db.commit()
    executor = _Executor()
    scheduler = Scheduler(config, sessions, executor)  # type: ignore[arg-type]
    for _ in range(MAX_LOSSES + 3):
        scheduler.tick()
    with sessions() as db:
        attached, unfit, lost = (job_by_id(db, j) for j in ("ftjob-attached", "ftjob-unfit", "ftjob-lost"))
        assert attached is not None and attached.status == "running" and attached.attempts == 1  # not restarted
        assert unfit is not None and unfit.status == "failed" and unfit.error is not None
        assert unfit.error["code"] == "no_resources_fit"
        assert lost is not None and lost.status == "failed" and lost.error is not None
        assert lost.error["code"] == "node_lost" and lost.attempts == MAX_LOSSES + 1
        msgs = [e.message for e in db.query(EventRow).filter(EventRow.job_id == "ftjob-lost").order_by(EventRow.seq)]
        attached_msgs = [e.message for e in db.query(EventRow).filter(EventRow.job_id == "ftjob-attached")]
    assert "ftjob-attached" not in executor.starts
    assert attached_msgs[0] == "Re-attached to attempt 1, still running on the cluster"
    assert "Placed by Ray: rank 0 on n1 (node abc)" in attached_msgs
    assert sum(m.startswith("Lost the job's process: its Ray node died") for m in msgs) == MAX_LOSSES
    assert sum(m.startswith("Resuming after its process was lost") for m in msgs) == MAX_LOSSES
    assert msgs[-1].startswith(f"The job failed: the job's process was lost {MAX_LOSSES + 1} times")


def test_rank_env_is_torchrun_and_accelerate_for_where_each_rank_landed(tmp_path: Path):
    """Ranks 0 and 1 on node A (GPUs 0 and 1), rank 2 on node B: each sees its node's GPUs and picks its own."""
    import yaml

    from service.serve.ray_runner import NodeInfo, rank_env

    from .._server import REPO

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"model": {"name_or_path": str(REPO / "examples/demo/model")},
                                   "data": {"train": str(REPO / "examples/demo/data/train.jsonl")},
                                   "distributed": {"num_processes": 3}, "output": {"dir": str(tmp_path / "run")}}))
    infos = [NodeInfo("A", "10.0.0.1", ["0"], 29511), NodeInfo("A", "10.0.0.1", ["1"]), NodeInfo("B", "10.0.0.2", ["0"])]
    one = rank_env(job, infos, 1)
    assert {k: one[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                "CUDA_VISIBLE_DEVICES")} == {
        "RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29511", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert one["ACCELERATE_MIXED_PRECISION"] == "no"  # accelerate's own launch code filled in its variables
    two = rank_env(job, infos, 2)
    assert (two["LOCAL_RANK"], two["LOCAL_WORLD_SIZE"], two["CUDA_VISIBLE_DEVICES"]) == ("0", "1", "0")
    cpu = rank_env(job, [NodeInfo("A", "h", [], 1), NodeInfo("B", "g", [])], 1)
    assert cpu["ACCELERATE_USE_CPU"] == "1" and "CUDA_VISIBLE_DEVICES" not in cpu  # gloo on CPU-only bundles
    assert rank_env(job, infos[:1], 0) == {}  # one process: nothing to add

"""What runs on a Ray node for one job process: a detached actor that starts ``hdpo-tune run job.yaml`` in the
job's run folder and reports its exit code.

The actor is a thin shell around the same command the local executor runs, so resume-from-checkpoint, the
run folder's integrity rules and its lock come from the run folder code, not from Ray. Rank 0 takes the run
folder's lock on the node that runs it and hands the locked descriptor to ``hdpo-tune run`` (as the local
executor does); while another process anywhere holds the lock (the previous attempt, still writing its
checkpoint), it waits. Ranks above 0 never take the lock (``hdpo-tune run`` only lets the main process write).

The child is started from a thread that lives exactly as long as the child (it waits on it), so the
parent-death signal (SIGTERM: the job writes a checkpoint and exits) fires only when the actor's process
dies, never when a Ray thread pool recycles a thread. Ray itself kills a worker's children when the worker
exits.

This module imports neither Ray nor the server: Ray pickles the class by reference, so every node imports it
from its own installed hdpo-tune.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hdpo_core.errors import InputError
from hdpo_core.layout import JOB_FILE, job_log
from service.runfolder.lock import FD_ENV, InUse, lock_fd

from .executor import _die_with_parent, hdpo_tune_command

#: seconds between two tries of a held run folder lock
LOCK_RETRY_S = 1.0


@dataclass
class NodeInfo:
    """Where a rank landed: the node's Ray id and address, the GPUs Ray gave it, a free port on it."""

    node_id: str
    address: str
    gpu_ids: list[str] = field(default_factory=list)
    port: int = 0


def node_address() -> str:
    """This node's address as Ray knows it."""
    import ray

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def distributed_env(job_file: Path, *, rank: int, world: int, master: str, port: int, local_rank: int,
                    local_world: int, cpu: bool) -> dict[str, str]:
    """The environment of one rank of a multi-process job: accelerate's own variables for the command line
    `hdpo-tune launch` builds for this job (backend config, mixed precision; computed by accelerate's launch
    code, so DDP, FSDP2 and ZeRO-3 are set exactly as under `hdpo-tune launch`), plus the torch.distributed
    variables torchrun would set for this rank."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from service.launch import build_command, launch_env

    argv = build_command(job_file, num_processes=world, cpu=cpu)
    start = argv.index("accelerate.commands.launch") + 1
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[start:]))
    args.main_process_ip, args.main_process_port = master, port
    full = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    env = {k: v for k, v in full.items() if os.environ.get(k) != v}
    env.update(launch_env(cpu))
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
               LOCAL_WORLD_SIZE=str(local_world), MASTER_ADDR=master, MASTER_PORT=str(port))
    return env


def rank_env(job_file: Path, infos: list[NodeInfo], rank: int) -> dict[str, str]:
    """Rank ``rank``'s environment once all ranks are placed (empty for a one-process job). GPUs Ray gave the
    ranks of one node are all visible to each of them (``LOCAL_RANK`` picks its own), so NCCL can use the links
    between them, as under torchrun."""
    if len(infos) == 1:
        return {}
    info = infos[rank]
    peers = [r for r, other in enumerate(infos) if other.node_id == info.node_id]
    gpus = [g for r in peers for g in infos[r].gpu_ids]
    env = distributed_env(job_file, rank=rank, world=len(infos), master=infos[0].address, port=infos[0].port,
                          local_rank=peers.index(rank), local_world=len(peers), cpu=not gpus)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        env["LOCAL_RANK"] = str(gpus.index(info.gpu_ids[0]))
    return env


class JobRunner:
    """One process of one job on the node Ray placed it on (made a Ray actor by :mod:`.ray_executor`)."""

    def __init__(self, job_id: str, run_dir: str, attempt: int, rank: int) -> None:
        self.job_id, self.run_dir, self.attempt, self.rank = job_id, Path(run_dir), attempt, rank
        self._code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self.error: str | None = None

    def info(self) -> NodeInfo:
        import ray

        ctx = ray.get_runtime_context()
        return NodeInfo(node_id=ctx.get_node_id(), address=node_address(),
                        gpu_ids=[str(g) for g in ray.get_gpu_ids()], port=free_port() if self.rank == 0 else 0)

    def started(self) -> bool:
        return self._started

    def start(self, infos: list[NodeInfo]) -> None:
        """Start the job process in a thread of its own (returns at once); :meth:`result` gives its exit code.
        ``infos`` says where every rank of the job landed."""
        self._started = True
        threading.Thread(target=self._run, args=(infos,), name=f"hdpo-job-{self.job_id}", daemon=True).start()

    def _run(self, infos: list[NodeInfo]) -> None:
        try:
            extra = rank_env(self.run_dir / JOB_FILE, infos, self.rank)
            self._code = self._spawn_and_wait(extra)
        except Exception as exc:  # reported as the job's failure, never lost in an actor log
            self.error = f"{type(exc).__name__}: {exc}"
            self._code = 1
        finally:
            self._done.set()

    def _spawn_and_wait(self, extra: dict[str, str]) -> int:
        if not (self.run_dir / JOB_FILE).is_file():
            self.error = (f"Ray node {node_address()} cannot see the data folder (no "
                          f"{self.run_dir}/job.yaml there): every node must mount the data folder at the same path")
            return 2
        fd = self._lock() if self.rank == 0 else None
        if fd is None and self.rank == 0:
            return 130  # cancelled while waiting for the lock
        env = {**os.environ, **extra}
        try:
            if fd is not None:
                env[FD_ENV] = str(fd)
            log_name = job_log(self.rank)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(self.run_dir / log_name, flags, 0o644), "ab") as log:
                log.write(f"--- {self.job_id} attempt {self.attempt} on Ray node {socket.gethostname()} "
                          f"({shlex.join(f'{k}={v}' for k, v in sorted(extra.items()) if k != FD_ENV)})\n"
                          .encode())
                log.flush()
                self._proc = subprocess.Popen([*hdpo_tune_command(), "run", JOB_FILE], cwd=self.run_dir, env=env,
                                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              pass_fds=(fd,) if fd is not None else (),
                                              preexec_fn=_die_with_parent)
        finally:
            if fd is not None:
                os.close(fd)  # the child holds the lock now, until it exits
        if self._stop.is_set():
            self._proc.terminate()
        return self._proc.wait()

    def _lock(self) -> int | None:
        """The run folder's lock, waiting while another process (a previous attempt) holds it."""
        while not self._stop.is_set():
            try:
                return lock_fd(self.run_dir.resolve(), name_holder=False)
            except InUse:
                time.sleep(LOCK_RETRY_S)
            except InputError as exc:
                raise OSError(exc.message) from None
        return None

    def result(self) -> tuple[int, str | None] | None:
        """(exit code, an error of the runner itself or None) once the job process has ended, else None. Returns
        at once: the server asks every tick, so no actor thread is ever parked on a call."""
        if not self._done.is_set():
            return None
        return (self._code if self._code is not None else 1), self.error

    def terminate(self) -> None:
        """SIGTERM the job process (it writes a checkpoint and exits 130)."""
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()


@dataclass
class Probe:
    """What one node says about the data folder and its own install (:func:`probe`)."""

    address: str
    sees: bool
    writable: bool
    version: str


def probe(path: str, token: str) -> Probe:
    """Run on each node at the server's start: does ``path`` (a file the server just wrote in the data folder)
    hold ``token`` here, can this node write the folder, which hdpo-tune is installed here."""
    from importlib.metadata import version

    file = Path(path)
    try:
        sees = file.read_text(encoding="utf-8") == token
    except OSError:
        sees = False
    return Probe(address=node_address(), sees=sees,
                 writable=sees and os.access(file.parent, os.W_OK), version=version("hdpo-tune"))

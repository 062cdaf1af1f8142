"""The Ray executor: every job becomes a placement group of detached, named Ray actors, one per process.

Each actor (:class:`.ray_runner.JobRunner`) runs ``hdpo-tune run job.yaml`` in the job's run folder, on the node
Ray placed its bundle on; the run folder lives on storage every node mounts at the same path, so a job resumes
from its last checkpoint on whichever node runs the next attempt, and the run folder's lock (taken by rank 0 on
its node) keeps two attempts from ever writing it at once.

Everything the server needs to find a job again is derived from the job id, never stored: the placement group is
named ``JOB`` and the actors ``JOB.rankR`` in the namespace :data:`NAMESPACE`. A restarted server re-attaches to
them by name (:meth:`RayExecutor.attach`); a job whose actors are gone is started again and resumes. Ray's own
faults become job events: an actor that died with its node raises :class:`.executor.Lost` (the scheduler starts
the job again), a request no set of nodes could ever hold raises :class:`.executor.CannotRun` (the job fails
with that reason instead of waiting in Ray's queue forever).

Multi-process jobs: one bundle per process, packed onto as few nodes as fit (``PACK``); once placed, each rank
gets the torch.distributed variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` = rank 0's node) and the
accelerate variables `hdpo-tune launch` would set (:func:`.ray_runner.rank_env`, on the rank's node, so the
server never imports accelerate or torch), i.e. accelerate
inside a placement group, not Ray Train: the job stays the CLI's own ``hdpo-tune run`` (same checkpoints, run
folder and lock), which Ray Train's function-based workers and its own checkpoint storage would replace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hdpo_core.layout import JOB_FILE

from .executor import Busy, CannotRun, JobProcess, Lost, Note
from .ray_runner import JobRunner, NodeInfo

log = logging.getLogger("hdpo_tune.serve")
NAMESPACE = "hdpo-tune"
#: seconds a job waits for its placement group before an event says it is queued in Ray
QUEUED_NOTE_S = 2.0
Resources = Mapping[str, float]


def actor_name(job_id: str, rank: int) -> str:
    return f"{job_id}.rank{rank}"


def describe(bundle: Resources) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"


def unfit_reason(bundle: Resources, count: int, nodes: list[Resources]) -> str | None:
    """Why ``count`` processes of ``bundle`` can never be placed on these nodes (their total resources), or
    None when they can. A node holds ``min(have // need)`` processes; the job fits when the nodes together
    hold ``count``."""
    def holds(node: Resources) -> int:
        return min((int(node.get(k, 0.0) // v) for k, v in bundle.items() if v > 0), default=count)

    room = sum(holds(n) for n in nodes)
    if room >= count:
        return None
    largest = max((holds(n) for n in nodes), default=0)
    return (f"Ray: no set of nodes could ever run this job: it asks for {count} process(es) of "
            f"{describe(bundle)} but the cluster's {len(nodes)} live node(s) hold {room} such process(es) in all "
            f"(at most {largest} on one node); lower distributed.num_processes or add nodes")


def actor_options(bundle: Resources) -> dict[str, Any]:
    """``ActorClass.options`` for an actor that uses exactly one bundle."""
    extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    return {"num_cpus": bundle.get("CPU", 0.0), "num_gpus": bundle.get("GPU", 0.0),
            **({"memory": bundle["memory"]} if bundle.get("memory") else {}), **({"resources": extra} if extra else {})}


def lost_reason(exc: BaseException) -> str:
    """One line for a Ray actor that died under a job."""
    text = str(exc)
    if "node has died" in text or "node was terminated" in text:
        return "its Ray node died"
    lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()]
    why = next((line for line in lines if " because " in line), None)  # "The actor is dead because its worker..."
    return (why or (lines[0] if lines else type(exc).__name__))[:300]


def live_nodes() -> list[dict[str, Any]]:
    """The cluster's live nodes as ``ray.nodes()`` describes them (``NodeID``, ``Resources``, ...)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]


class RayJob:
    """One job's actors as the scheduler sees them: placed -> located -> started -> ended (or lost)."""

    def __init__(self, job_id: str, run_dir: Path, group: Any, actors: list[Any], bundle: Resources, *,
                 started: bool = False) -> None:
        self.job_id, self.run_dir, self.group, self.actors, self.bundle = job_id, run_dir, group, actors, bundle
        self.pid: int | None = None
        self.error: str | None = None
        self._notes: list[Note] = []
        self._since = time.monotonic()
        self._queued_noted = False
        self._ready = group.ready()
        self._infos: list[Any] | None = None
        self._started = started
        self._pending: dict[int, Any] = {}  # rank -> the outstanding ``result`` call (one per actor at a time)
        self._results: dict[int, int] = {}
        self._code: int | None = None
        self._stopping = False

    def notes(self) -> list[Note]:
        out, self._notes = self._notes, []
        return out

    def poll(self) -> int | None:
        import ray

        if self._code is not None:
            return self._code
        try:
            if not self._started:
                self._place(ray)
                return None
            return self._collect(ray)
        except ray.exceptions.ActorUnavailableError:
            # an actor's node stopped answering: dead or slow, Ray does not know yet. That answer is final for the
            # calls already made, so they are made again: they end with ActorDiedError once the node is declared
            # dead, or with the real answer
            if self._started:
                self._pending.clear()
            else:
                self._infos = None
            return None
        except ray.exceptions.RayActorError as exc:
            self.cleanup()
            raise Lost(lost_reason(exc)) from None

    def _place(self, ray: Any) -> None:
        if self._infos is None:
            ready, _ = ray.wait([self._ready], timeout=0)
            if not ready:
                if not self._queued_noted and time.monotonic() - self._since > QUEUED_NOTE_S:
                    self._queued_noted = True
                    self._notes.append(("info", f"Waiting in Ray's queue for {len(self.actors)} process(es) of "
                                        f"{describe(self.bundle)} (the cluster is busy)"))
                return
            self._infos = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(self._infos, num_returns=len(self._infos), timeout=0)
        if len(ready) < len(self._infos):
            return
        infos: list[NodeInfo] = ray.get(self._infos)
        for actor in self.actors:
            actor.start.remote(infos)  # each rank works out its own environment on its node (accelerate, torch)
        self._started = True
        where = ", ".join(f"rank {r} on {i.address} (node {i.node_id[:8]})" for r, i in enumerate(infos))
        self._notes.append(("info", f"Placed by Ray: {where}"))
        if self._stopping:
            self.terminate()

    def _collect(self, ray: Any) -> int | None:
        """Ask each running rank for its result (a call that returns at once), one outstanding call each."""
        for rank, actor in enumerate(self.actors):
            if rank in self._results:
                continue
            ref = self._pending.get(rank)
            if ref is None:
                self._pending[rank] = actor.result.remote()
                continue
            if not ray.wait([ref], timeout=0)[0]:
                continue
            del self._pending[rank]
            answer = ray.get(ref)
            if answer is None:
                continue  # still running
            code, error = answer
            self._results[rank] = int(code)
            if error and self.error is None:
                self.error = error
            if code != 0 and len(self._results) < len(self.actors):
                self.terminate()  # a rank failed: the others would wait for it forever
        if len(self._results) < len(self.actors):
            return None
        self.cleanup()
        self._code = self._results[0] or next((c for c in self._results.values() if c), 0)
        return self._code

    def terminate(self) -> None:
        """SIGTERM every rank's process (each writes a checkpoint); before the job started, just remove it."""
        self._stopping = True
        if not self._started:
            if self._infos is None:  # still in Ray's queue; otherwise _place starts it, then stops it at once
                self.cleanup()
                self._code = 130
            return
        for actor in self.actors:
            actor.terminate.remote()

    def cleanup(self) -> None:
        """Remove the job's actors (freeing their names) and its placement group."""
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # already gone
                log.debug("kill %s: %s", self.job_id, exc)
        try:
            ray.util.remove_placement_group(self.group)
        except Exception as exc:
            log.debug("remove placement group %s: %s", self.job_id, exc)


class RayExecutor:
    """Jobs as Ray actors (see the module docstring); ``bundle`` is what each job process asks for."""

    keeps_jobs = True  # the jobs run on the cluster, not under the server: a stopped server leaves them running

    def __init__(self, bundle: Resources) -> None:
        self.bundle = dict(bundle)

    def processes(self, run_dir: Path) -> int:
        """How many processes the job asks for (``distributed.num_processes``, checked against the limits when
        the job was created)."""
        from hdpo_core.errors import InputError
        from service.spec.job import load_spec

        try:
            return load_spec(run_dir / JOB_FILE).distributed.num_processes
        except InputError as exc:
            raise CannotRun(exc.message, code="invalid_input") from None

    def _actor(self, job_id: str, rank: int) -> Any | None:
        import ray

        try:
            return ray.get_actor(actor_name(job_id, rank), namespace=NAMESPACE)
        except ValueError:
            return None

    def _group(self, job_id: str) -> Any | None:
        import ray

        try:
            return ray.util.get_placement_group(job_id)
        except ValueError:
            return None

    def busy(self, run_dir: Path) -> bool:
        from service.runfolder.lock import lock_held

        return self._actor(run_dir.name, 0) is not None or lock_held(run_dir) is True

    def _remove(self, job_id: str, count: int) -> None:
        import ray

        for rank in range(count):
            actor = self._actor(job_id, rank)
            if actor is not None:
                ray.kill(actor, no_restart=True)
        group = self._group(job_id)
        if group is not None:
            ray.util.remove_placement_group(group)

    def attach(self, job_id: str, run_dir: Path) -> JobProcess | None:
        """The job's actors if all of them still live (a restarted server takes them back), else None (and
        what is left of them is removed, so the job can start again)."""
        import ray

        try:
            count = self.processes(run_dir)
        except CannotRun:
            return None  # start() fails the job with the reason
        actors = [a for a in (self._actor(job_id, r) for r in range(count)) if a is not None]
        group = self._group(job_id)
        if group is None or len(actors) < count:
            self._remove(job_id, count)
            return None
        try:
            started = ray.get([a.started.remote() for a in actors], timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            started = [False]
        if not all(started):  # the previous server died between placing and starting them
            self._remove(job_id, count)
            return None
        return RayJob(job_id, run_dir, group, actors, self.bundle, started=True)

    def start(self, job_id: str, run_dir: Path, *, attempt: int, slot: int) -> JobProcess:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self._actor(job_id, 0) is not None:
            raise Busy(str(run_dir))  # still running on Ray: the scheduler re-attaches to it
        count = self.processes(run_dir)
        self._remove(job_id, count)  # what a lost attempt left (its placement group)
        nodes = [n["Resources"] for n in live_nodes()]
        reason = unfit_reason(self.bundle, count, nodes)
        if reason is not None:
            raise CannotRun(reason, code="no_resources_fit")
        group = ray.util.placement_group([dict(self.bundle) for _ in range(count)], strategy="PACK", name=job_id,
                                         lifetime="detached")
        runner = ray.remote(JobRunner)
        actors = [runner.options(name=actor_name(job_id, r), namespace=NAMESPACE, lifetime="detached",
                                 max_restarts=0, max_concurrency=4, **actor_options(self.bundle),
                                 scheduling_strategy=PlacementGroupSchedulingStrategy(
                                     group, placement_group_bundle_index=r))
                  .remote(job_id, str(run_dir), attempt, r) for r in range(count)]
        return RayJob(job_id, run_dir, group, actors, self.bundle)

"""The worker pool: starts queued jobs, watches running ones, and resumes what a crash left behind.

One thread (not the API's event loop, so training I/O never slows a status read) ticks every
``poll_interval_s``:

1. each job process of this server: new ``metrics.jsonl`` lines and stage changes become events; a cancel
   request becomes SIGTERM; an exit becomes ``succeeded``/``failed``/``cancelled``;
2. jobs the database says are ``running`` but that no process of this server runs (the server was killed,
   or stopped): once their run folder is free (:mod:`.executor`'s lock), ``hdpo-tune run`` is started again
   on the same folder, which resumes from the last checkpoint and skips finished stages;
3. queued jobs, oldest first, while fewer than ``workers`` processes run. A job is claimed with a
   compare-and-set on its row (``status = 'queued'``), so two schedulers never start the same job.

A stopped server (SIGTERM/Ctrl-C) stops its job processes the same way (each writes a checkpoint) and leaves
them ``running`` in the database: the next start resumes them. Nothing a client sees goes backwards.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.orm import Session

from . import store
from .config import ServeConfig
from .db import JobRow, Sessions, now
from .executor import Busy, CannotRun, Executor, JobProcess, Lost
from .finish import finish_job
from .progress import MetricsReader, metric_event, read_status
from .schemas import EventLevel

log = logging.getLogger("hdpo_tune.serve")
#: a job whose process is lost (its machine died) more often than this fails instead of starting again
MAX_LOSSES = 3


@dataclass
class Running:
    job_id: str
    process: JobProcess
    slot: int
    reader: MetricsReader
    total_steps: int | None = None
    term_sent: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Scheduler:
    def __init__(self, config: ServeConfig, sessions: Sessions, executor: Executor) -> None:
        self.config, self.sessions, self.executor = config, sessions, executor
        self.workers = config.worker_count()
        self.running: dict[str, Running] = {}
        self.losses: dict[str, int] = {}  # job id -> processes lost under it (this server's count)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hdpo-serve-scheduler", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 120.0) -> None:
        """Stop taking jobs, SIGTERM every job process (each checkpoints), wait for them, leave them resumable."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=grace_s + 10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a database hiccup must not end the pool; the next tick retries
                log.error("scheduler tick failed: %s: %s", type(exc).__name__, str(exc)[:200])
            self._stop.wait(self.config.poll_interval_s)
        self._shutdown()

    def _shutdown(self, grace_s: float = 120.0) -> None:
        if self.executor.keeps_jobs:
            self._leave_running()
            return
        for run in self.running.values():
            run.process.terminate()
        deadline = time.monotonic() + grace_s
        while self.running and time.monotonic() < deadline:
            for job_id, run in list(self.running.items()):
                if run.process.poll() is not None:
                    with self.sessions() as db:
                        self._progress(db, run)
                        job = store.job_by_id(db, job_id)
                        if job is not None and job.status == "running":
                            job.pid, job.lease_until = None, None
                            store.add_event(db, job_id, "Server stopped: the job process wrote a checkpoint and "
                                            "exited; it resumes when the server starts again", level="warn")
                        db.commit()
                    del self.running[job_id]
            time.sleep(0.2)

    def _leave_running(self) -> None:
        """Stop watching jobs that run outside the server (a cluster): they go on; any server re-attaches."""
        with self.sessions() as db:
            for job_id in list(self.running):
                job = store.job_by_id(db, job_id)
                if job is not None and job.status == "running":
                    job.host, job.lease_until = None, None
                    store.add_event(db, job_id, "Server stopped: the job keeps running on the cluster; the next server "
                              "re-attaches to it")
            db.commit()
        self.running.clear()

    # --- one tick ----------------------------------------------------------------------------------------

    def tick(self) -> None:
        with self.sessions() as db:
            for job_id in list(self.running):
                self._watch(db, self.running[job_id])
            waiting = self._resume_orphans(db)
            self._start_queued(db, reserved=waiting)

    def _free_slot(self, reserved: int = 0) -> int | None:
        """A free worker slot, keeping ``reserved`` slots for interrupted jobs waiting to resume."""
        if len(self.running) + reserved >= self.workers:
            return None
        used = {r.slot for r in self.running.values()}
        return next((s for s in range(self.workers) if s not in used), None)

    def _launch(self, db: Session, job: JobRow, slot: int, note: str) -> None:
        run_dir = self.config.runs_dir / job.id
        job.attempts += 1
        process = self.executor.start(job.id, run_dir, attempt=job.attempts, slot=slot)  # may raise Busy
        job.pid, job.host, job.slot = process.pid, self.config.host_id, slot
        job.lease_until = now() + self.config.lease_s
        job.started_at = job.started_at or now()
        store.add_event(db, job.id, note)
        db.commit()
        self.running[job.id] = Running(job.id, process, slot, MetricsReader(run_dir))

    def _start_queued(self, db: Session, reserved: int) -> None:
        while (slot := self._free_slot(reserved)) is not None and not self._stop.is_set():
            job = store.next_queued(db)
            if job is None:
                return
            if not store.claim(db, job.id, host=self.config.host_id, lease_until=now() + self.config.lease_s):
                continue  # another scheduler took it
            db.refresh(job)
            store.add_event(db, job.id, "Fine-tuning job started")
            try:
                self._launch(db, job, slot, f"Started `hdpo-tune run` (attempt 1) in slot {slot}")
            except Busy:
                db.rollback()  # the folder is held (cannot happen for a new job); retried as an orphan
            except CannotRun as exc:
                db.rollback()
                self._fail(db, store.job_by_id(db, job.id), exc.message, code=exc.code)
            except OSError as exc:
                db.rollback()
                failed = store.job_by_id(db, job.id)
                self._fail(db, failed, f"could not start the job process: {exc.strerror or exc}")

    def _resume_orphans(self, db: Session) -> int:
        """Jobs marked running that no process of this server runs: the server was killed or stopped.
        Returns how many still wait (their folder is held by the old process, or no slot is free): their slots
        are kept from queued jobs, so a resumed job never loses its place to a job queued after it."""
        orphans = store.orphans(db, list(self.running), host=self.config.host_id, at=now())
        waiting = 0
        for job in orphans:
            run_dir = self.config.runs_dir / job.id
            if self._attach(db, job):
                continue
            if job.cancel_requested:
                if not self.executor.busy(run_dir):
                    self._finish(db, job, "cancelled", "The job was cancelled")
                continue
            slot = self._free_slot(waiting)
            if slot is None or self._stop.is_set():
                waiting += 1
                continue
            step = (read_status(run_dir) or {}).get("step")
            why = "its process was lost" if job.id in self.losses else "a server restart"
            try:
                self._launch(db, job, slot, f"Resuming after {why}: `hdpo-tune run` attempt "
                             f"{job.attempts + 1} continues from the last checkpoint (last reported step "
                             f"{job.last_metrics_step or step or 0})")
            except Busy:
                db.rollback()  # the previous process is still writing its checkpoint; next tick
                waiting += 1
            except CannotRun as exc:
                db.rollback()
                self._fail(db, job, exc.message, code=exc.code)
            except OSError as exc:
                db.rollback()
                self._fail(db, job, f"could not start the job process: {exc.strerror or exc}")
        return waiting

    def _attach(self, db: Session, job: JobRow) -> bool:
        """Take back a job the executor still runs from before this server started (a cluster's job)."""
        if not self.executor.keeps_jobs:
            return False
        process = self.executor.attach(job.id, self.config.runs_dir / job.id)
        if process is None:
            return False
        slot = self._free_slot()
        slot = slot if slot is not None else len(self.running)  # it runs whether or not a slot is free
        job.host, job.slot, job.lease_until = self.config.host_id, slot, now() + self.config.lease_s
        store.add_event(db, job.id, f"Re-attached to attempt {job.attempts}, still running on the cluster")
        db.commit()
        self.running[job.id] = Running(job.id, process, slot, MetricsReader(self.config.runs_dir / job.id))
        return True

    # --- watching ----------------------------------------------------------------------------------------

    def _progress(self, db: Session, run: Running) -> JobRow | None:
        job = store.job_by_id(db, run.job_id)
        if job is None:
            return None
        status = read_status(self.config.runs_dir / job.id) or {}
        if status.get("total_steps"):
            run.total_steps = int(status["total_steps"])
        stage_key = f"{status.get('stage')}:{status.get('state')}"
        if status and stage_key != job.last_stage:
            job.last_stage = stage_key
            if status.get("stage") != "done":
                store.add_event(db, job.id, f"Stage {status.get('stage')}: {status.get('state')}",
                          data={"stage": status.get("stage"), "state": status.get("state")})
        # finished stages come from status.json's list, so a stage shorter than one poll is still reported
        done = [s for s in status.get("stages_done") or [] if s not in (job.stages_reported or [])]
        for stage in done:
            store.add_event(db, job.id, f"Stage {stage}: done", data={"stage": stage, "state": "done"})
        if done:
            job.stages_reported = [*(job.stages_reported or []), *done]
        for rec in run.reader.new_records():
            if rec["step"] <= job.last_metrics_step:
                continue
            message, data = metric_event(rec, run.total_steps)
            store.add_event(db, job.id, message, type_="metrics", data=data)
            job.last_metrics_step = rec["step"]
        t = now()
        if job.lease_until is None or job.lease_until - t < self.config.lease_s // 2:
            job.lease_until = t + self.config.lease_s
        return job

    def _watch(self, db: Session, run: Running) -> None:
        job = self._progress(db, run)
        if job is None:
            return
        for level, message in run.process.notes():
            store.add_event(db, job.id, self.config.public(message), level=level)
        if job.cancel_requested and not run.term_sent:
            run.process.terminate()
            run.term_sent = True
            store.add_event(db, job.id, "Cancellation requested: SIGTERM sent; the job writes a checkpoint and stops")
        db.commit()
        try:
            code = run.process.poll()
        except Lost as exc:
            del self.running[job.id]
            self._lost(db, job, str(exc))
            return
        if code is None:
            return
        del self.running[job.id]
        if job.cancel_requested:
            self._finish(db, job, "cancelled", "The job was cancelled")
        elif code == 0:
            finish_job(self.config, db, job)
        else:
            status = read_status(self.config.runs_dir / job.id) or {}
            reason = status.get("error") or run.process.error or f"the job process exited with code {code}; see its log"
            self._fail(db, job, str(reason), code="invalid_input" if code == 2 else "job_failed")

    def _lost(self, db: Session, job: JobRow, reason: str) -> None:
        """The job's process was lost (not its own failure): start it again from its checkpoint, a few times."""
        self.losses[job.id] = self.losses.get(job.id, 0) + 1
        if job.cancel_requested:
            self._finish(db, job, "cancelled", "The job was cancelled")
        elif self.losses[job.id] > MAX_LOSSES:
            self._fail(db, job, f"the job's process was lost {self.losses[job.id]} times ({reason})", code="node_lost")
        else:
            job.pid, job.lease_until = None, None
            store.add_event(db, job.id, f"Lost the job's process: {reason}; it resumes from its last checkpoint",
                      level="warn")
            db.commit()

    def _finish(self, db: Session, job: JobRow, state: Literal["failed", "cancelled"], message: str,
                level: EventLevel = "info") -> None:
        store.end_job(db, job, state, message, level=level)

    def _fail(self, db: Session, job: JobRow | None, message: str, code: str = "job_failed") -> None:
        if job is None:
            return
        clean = self.config.public(message)
        job.error = {"code": code, "message": clean, "param": None}
        self._finish(db, job, "failed", f"The job failed: {clean}", level="error")

"""Test-only start-up hook for launched ranks (put on PYTHONPATH by tests/distributed).

* ``HDPO_AUDIT_WRITES=1``: on ranks other than 0, every file write, create, rename or delete (Python's audit
  events) is printed to stderr as ``HDPO-AUDIT rank=R event path``. The tests assert there are none.
* ``HDPO_STALL_AT_STEP=N``: rank 0 prints ``HDPO-STALLED`` and sleeps once the metrics of step N are written
  (the checkpoint of the step before is complete by then), so a test can SIGKILL a run mid-training.
* ``HDPO_STALL_UNTIL_ORPHANED=N:MARKER``: once only (while the file MARKER does not exist; it is created then),
  after the metrics of step N are written, the process waits until its parent process dies, then carries on (a
  parent-death SIGTERM then stops it at the step's end), so a test can crash a server mid-job without racing it.
* ``HDPO_STALL_IN_STAGE=eval`` (or another pipeline stage): the stage sleeps before it starts its work, so a
  test can signal a run inside that stage without racing it.
"""

import os
import sys

_RANK = int(os.environ.get("RANK", "0") or 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate", "os.symlink",
                "os.link", "os.chmod", "os.utime"}


def _report(event: str, path: object) -> None:
    p = os.fsdecode(path) if isinstance(path, str | bytes) else str(path)
    if p.startswith(("/dev/", "/proc/", "/sys/")) or isinstance(path, int):
        return
    sys.__stderr__.write(f"HDPO-AUDIT rank={_RANK} {event} {p}\n")


def _hook(event: str, args: tuple) -> None:
    if event == "open" and args:
        path, mode, flags = (tuple(args) + (None, None))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing:
            _report(event, path)
    elif event in _PATH_EVENTS and args:
        _report(event, args[0])


if os.environ.get("HDPO_AUDIT_WRITES") == "1" and _RANK != 0:
    sys.addaudithook(_hook)

if os.environ.get("HDPO_STALL_AT_STEP") and _RANK == 0:
    import time

    from hdpo_core.metrics_log import MetricsLog

    _orig = MetricsLog.write
    _at = int(os.environ["HDPO_STALL_AT_STEP"])

    def _write(self, metrics):  # type: ignore[no-untyped-def]
        _orig(self, metrics)
        if int(metrics["step"]) >= _at:
            sys.__stderr__.write("HDPO-STALLED\n")
            sys.__stderr__.flush()
            time.sleep(600)

    MetricsLog.write = _write

if os.environ.get("HDPO_STALL_IN_STAGE") and _RANK == 0:
    import time

    import service.stages.pipeline as _pipeline

    _orig_stage_fn = _pipeline._stage_fn

    def _stage_fn(stage, *args, **kwargs):  # type: ignore[no-untyped-def]
        run = _orig_stage_fn(stage, *args, **kwargs)
        if stage != os.environ["HDPO_STALL_IN_STAGE"]:
            return run

        def stalled():  # type: ignore[no-untyped-def]
            sys.__stderr__.write(f"HDPO-STALLED in {stage}\n")
            sys.__stderr__.flush()
            time.sleep(600)
            return run()

        return stalled

    _pipeline._stage_fn = _stage_fn


if os.environ.get("HDPO_STALL_UNTIL_ORPHANED") and _RANK == 0:
    import time
    from pathlib import Path

    from hdpo_core.metrics_log import MetricsLog

    _orphan_step, _orphan_marker = os.environ["HDPO_STALL_UNTIL_ORPHANED"].split(":", 1)
    _orig_orphan = MetricsLog.write

    def _write_until_orphaned(self, metrics):  # type: ignore[no-untyped-def]
        _orig_orphan(self, metrics)
        marker = Path(_orphan_marker)
        if int(metrics["step"]) >= int(_orphan_step) and not marker.exists():
            marker.write_text(str(metrics["step"]))
            parent, deadline = os.getppid(), time.monotonic() + 600
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.1)

    MetricsLog.write = _write_until_orphaned

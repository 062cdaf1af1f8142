"""Test-only start-up hook for job processes on the test cluster's nodes (their PYTHONPATH carries this folder).

``HDPO_TEST_GATES=DIR``: a job process (rank 0, cwd = its run folder ``JOB``) whose ``train.seed`` is S and for
which ``DIR/seedS.hold`` lists step numbers stops after writing the metrics of each listed step N, once per step
(while ``DIR/JOB.N.reached`` does not exist: it creates it), until ``DIR/JOB.N.go`` exists (10 minutes at most).
The hold is keyed by the seed so a test sets it before the job exists. A test thereby acts (kills a
node, the server, cancels) while a job is surely mid-training, however fast or slow the machine is.
"""

import os

if os.environ.get("HDPO_TEST_GATES") and os.environ.get("RANK", "0") == "0" and os.path.isfile("job.yaml"):
    import time
    from pathlib import Path

    import yaml

    from hdpo_core.metrics_log import MetricsLog

    _gates, _job = Path(os.environ["HDPO_TEST_GATES"]), Path.cwd().name
    _seed = ((yaml.safe_load(Path("job.yaml").read_text()) or {}).get("train") or {}).get("seed")
    _orig = MetricsLog.write

    def _write(self, metrics):  # type: ignore[no-untyped-def]
        _orig(self, metrics)
        try:
            held = (_gates / f"seed{_seed}.hold").read_text().split()
        except OSError:
            return
        step = str(metrics["step"])
        reached = _gates / f"{_job}.{step}.reached"
        if step in held and not reached.exists():
            reached.write_text(str(os.getpid()))
            deadline = time.monotonic() + 600
            while not (_gates / f"{_job}.{step}.go").exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    MetricsLog.write = _write

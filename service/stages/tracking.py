"""Experiment tracking (``tracking:``) through accelerate's tracker interface: MLflow, Weights & Biases, trackio.

What goes to every tracker, and why it is done here rather than by ``Accelerator(log_with=...)``:

* the metrics of ``metrics.jsonl``, under the same names and steps (the train stage's metrics sink fans out);
* the resolved job spec as parameters, flattened (``hdpo.alpha``), with secrets redacted; logged when the
  tracker run is created only (MLflow refuses to change a logged parameter);
* the eval stage's headline numbers at the end (``final_eval/accuracy/policy/1``, the path in results.json),
  at the last training step;
* one tracker run per run folder, across stages and restarts: the trackers' run ids are kept in
  ``RUN/tracking.json``, so a resumed training and the later eval stage log into the run training started
  (``run --force`` removes the file and starts a new one). An ``Accelerator`` lives only inside training.

``metrics.jsonl`` stays the record: a tracker that cannot start stops the job before training (one line), but
one that fails while logging is reported once and dropped, so a flaky tracking server never kills a long run.
Callers create trackers on the main process only (rank 0); the core never sees any of this.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hdpo_core.errors import HdpoError, InputError, RunError
from hdpo_core.io import atomic_write_text
from hdpo_core.layout import TRACKING
from hdpo_core.metrics_log import MetricsLog, read_metrics
from service.spec.job import JobSpec, redact_secrets, spec_to_dict
from service.spec.tracking import TrackingSpec

_SECRET_KEY = re.compile(r"^(hf_|hub_|api_|access_|auth_|bearer_)?(token|api_?key|secret|password|passwd)$",
                         re.IGNORECASE)
_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN")
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
Param = str | int | float | bool


def redact(value: str) -> str:
    """``value`` with tokens, credentials in URLs and the values of secret environment variables replaced."""
    value = _URL_USERINFO.sub("***@", redact_secrets(value))
    for var in _SECRET_ENV:
        secret = os.environ.get(var)
        if secret and len(secret) >= 8:
            value = value.replace(secret, "***")
    return value


def spec_params(spec: JobSpec) -> dict[str, Param]:
    """The resolved spec as flat ``section.field`` parameters (other values as JSON text), redacted."""
    out: dict[str, Param] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk("***" if _SECRET_KEY.match(str(key)) and value not in (None, "") else value,
                     f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, bool | int | float):
            out[prefix] = node
        else:
            out[prefix] = redact(node if isinstance(node, str) else json.dumps(node))

    walk(spec_to_dict(spec), "")
    return out


def metric_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of one metrics.jsonl record, minus ``step`` (trackers take it as the step)."""
    return {k: float(v) for k, v in metrics.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def flatten_numbers(node: Any, prefix: str) -> dict[str, float]:
    """Numeric leaves of nested results as ``prefix/a/b`` metrics."""
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in flatten_numbers(sub, f"{prefix}/{key}").items()}
    return metric_values({prefix: node})


class Trackers:
    """The accelerate trackers of one run folder, opened on the main process."""

    def __init__(self, live: list[Any]) -> None:
        self._live = live

    def add(self, tracker: Any) -> None:
        self._live.append(tracker)

    def log(self, values: dict[str, float], step: int | None) -> None:
        if not values:
            return
        for tracker in list(self._live):
            try:
                _quiet(lambda t=tracker: t.log(values, step=step))
            except Exception as exc:  # noqa: BLE001 - any tracker failure; metrics.jsonl keeps the record
                self._live.remove(tracker)
                print(f"warning: tracking: {tracker.name} failed while logging step {step} ({type(exc).__name__}: "
                      f"{redact(str(exc).splitlines()[0] if str(exc) else '')[:200]}); it is dropped for the "
                      "rest of this stage, metrics.jsonl has every step", file=sys.stderr)

    def close(self) -> None:
        for tracker in self._live:
            with contextlib.suppress(Exception):
                _quiet(tracker.finish)
        self._live = []


def open_trackers(spec: JobSpec, run_dir: Path) -> Trackers:
    """Start (or re-attach to) the run folder's tracker runs; raises a one-line error when one cannot start."""
    t = spec.tracking
    assert t is not None  # callers check spec.tracking first
    path = run_dir / TRACKING
    state: dict[str, dict[str, str]] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    name = t.run_name or run_dir.name
    started = Trackers([])
    for kind in t.report_to:
        known = state.get(kind, {})
        if known.get("project") != t.project:  # another project (or store, below) is another run
            known = {}
        try:
            tracker, ids = _START[kind](t, run_dir, name, known, spec_params(spec))
        except BaseException as exc:
            started.close()  # the trackers started so far end their runs
            if isinstance(exc, HdpoError) or not isinstance(exc, Exception):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RunError(f"tracking.report_to: cannot start {kind} ({type(exc).__name__}: {redact(first)[:200]}); "
                           f"{_FIX[kind]}, or remove the tracking section") from None
        state[kind] = {**ids, "project": t.project}
        started.add(tracker)
        atomic_write_text(path, json.dumps(state, indent=1))
    print("tracking: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in state.items() if k in t.report_to),
          file=sys.stderr)
    return started


class TrackedMetricsLog:
    """``metrics.jsonl``/TensorBoard plus the trackers, behind the MetricsLog interface the train stage uses."""

    def __init__(self, log: MetricsLog, trackers: Trackers) -> None:
        self._log, self._trackers = log, trackers

    def write(self, metrics: dict[str, Any]) -> None:
        self._log.write(metrics)
        self._trackers.log(metric_values(metrics), int(metrics["step"]))

    def close(self) -> None:
        self._log.close()
        self._trackers.close()


def open_metrics_log(spec: JobSpec, run_dir: Path, *, resume_step: int | None) -> MetricsLog | TrackedMetricsLog:
    """The train stage's metrics sink (main process only): MetricsLog, fanned out to the trackers when set."""
    log = MetricsLog(run_dir, resume_step=resume_step)
    if spec.tracking is None:
        return log
    try:
        return TrackedMetricsLog(log, open_trackers(spec, run_dir))
    except BaseException:
        log.close()
        raise


def log_final_eval(spec: JobSpec, run_dir: Path, numbers: dict[str, Any]) -> None:
    """Log the eval stage's headline numbers into the run's trackers, at the last training step."""
    if spec.tracking is None:
        return
    records = read_metrics(run_dir)
    step = int(records[-1]["step"]) if records else None
    trackers = open_trackers(spec, run_dir)
    try:
        trackers.log(flatten_numbers(numbers, "final_eval"), step)
    finally:
        trackers.close()


# --- one starter per tracker: (tracker, ids to reattach later) ---------------------------------------------

def _start_mlflow(t: TrackingSpec, run_dir: Path, name: str, known: dict[str, str],
                  params: dict[str, Param]) -> tuple[Any, dict[str, str]]:
    mlflow = _import("mlflow")
    from accelerate.tracking import MLflowTracker

    if t.mlflow_tracking_uri is not None:
        mlflow.set_tracking_uri(t.mlflow_tracking_uri)
    uri = redact(mlflow.get_tracking_uri())
    if known.get("tracking_uri") != uri:
        known = {}
    tracker = MLflowTracker(experiment_name=t.project, run_id=known.get("run_id"), run_name=name)
    _quiet(tracker.start)
    if not known:  # MLflow refuses to change a logged parameter: log them when the run is created
        _quiet(lambda: tracker.store_init_configuration(params))
    return tracker, {"run_id": tracker.active_run.info.run_id, "tracking_uri": uri}


def _start_wandb(t: TrackingSpec, run_dir: Path, name: str, known: dict[str, str],
                 params: dict[str, Param]) -> tuple[Any, dict[str, str]]:
    wandb = _import("wandb")
    from accelerate.tracking import WandBTracker

    run_id = known.get("id") or uuid.uuid4().hex[:12]
    settings = wandb.Settings(console="off", silent=True)
    kwargs: dict[str, Any] = {"name": name, "id": run_id, "resume": "allow", "dir": str(run_dir),
                              "settings": settings, "entity": t.wandb_entity}
    if t.wandb_mode is not None:
        kwargs["mode"] = t.wandb_mode
    if not known:  # W&B keeps the config of a resumed run
        kwargs["config"] = params
    tracker = WandBTracker(t.project, **kwargs)
    _quiet(tracker.start)
    url = getattr(tracker.run, "url", None)  # None offline; W&B's banner is silenced, so say where it is
    return tracker, {"id": run_id, **({"url": str(url)} if url else {})}


def _start_trackio(t: TrackingSpec, run_dir: Path, name: str, known: dict[str, str],
                   params: dict[str, Param]) -> tuple[Any, dict[str, str]]:
    trackio = _import("trackio")
    from accelerate.tracking import TrackioTracker

    class _TrackioTracker(TrackioTracker):  # type: ignore[misc]
        """accelerate finishes the run object only; trackio.finish() also clears trackio's current run, which
        its exit hook would otherwise finish a second time (printing on stdout after our summary)."""

        def finish(self) -> None:
            trackio.finish()

    run_name = known.get("name") or f"{name}-{uuid.uuid4().hex[:6]}"
    kwargs: dict[str, Any] = {"name": run_name, "resume": "must" if known else "never",
                              "auto_log_cpu": False, "auto_log_gpu": False,
                              "config": params}  # trackio replaces a resumed run's config: always give it
    tracker = _TrackioTracker(t.project, **kwargs)
    _quiet(tracker.start)
    return tracker, {"name": run_name}


_START: dict[str, Callable[..., tuple[Any, dict[str, str]]]] = {
    "mlflow": _start_mlflow, "wandb": _start_wandb, "trackio": _start_trackio}
_FIX = {"mlflow": "check tracking.mlflow_tracking_uri / MLFLOW_TRACKING_URI and the server",
        "wandb": "set WANDB_API_KEY (or run `wandb login`), or set tracking.wandb_mode: offline",
        "trackio": "check TRACKIO_DIR (or the Space and HF_TOKEN)"}


def missing_packages(t: TrackingSpec) -> list[str]:
    """One problem line per tracker of ``report_to`` that is not installed (for ``hdpo-tune validate``)."""
    import importlib.util

    return [_MISSING.format(name=name) for name in t.report_to if importlib.util.find_spec(name) is None]


_MISSING = "tracking.report_to: {name} is not installed; pip install 'hdpo-tune[tracking]' (or pip install {name})"


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise InputError(_MISSING.format(name=name)) from None


def _quiet(fn: Callable[[], Any]) -> Any:
    """Run a tracker call with its banners on stderr: stdout carries hdpo-tune's own summary only."""
    with contextlib.redirect_stdout(sys.stderr):
        return fn()


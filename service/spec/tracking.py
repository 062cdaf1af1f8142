"""The job spec's ``tracking:`` section: experiment trackers fed through accelerate's tracker interface.

Only *where* metrics go is configured here; *what* is logged is fixed (service/stages/tracking.py): the metrics of
``metrics.jsonl`` under the same names, the resolved spec as parameters (secrets redacted) and the eval
stage's headline numbers at the end. Credentials never come from the job file: MLflow reads
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``/``MLFLOW_TRACKING_TOKEN``, W&B ``WANDB_API_KEY`` (or
``wandb login``), trackio ``HF_TOKEN`` for a Space. Defaults live here only.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from service.spec.base import StrictModel

Tracker = Literal["mlflow", "wandb", "trackio"]


class TrackingSpec(StrictModel):
    """Experiment tracking (MLflow, Weights & Biases, trackio) on the main process only."""

    report_to: list[Tracker] = Field(..., min_length=1, description="Trackers to log to: mlflow, wandb and/or "
                                     "trackio (pip install 'hdpo-tune[tracking]').")
    project: str = Field("hdpo-tune", min_length=1, description="MLflow experiment name, W&B project and trackio "
                         "project.")
    run_name: str | None = Field(None, min_length=1, description="Run name in the trackers. Default: the run "
                                 "folder's name (output.dir).")
    mlflow_tracking_uri: str | None = Field(
        None, min_length=1, description="MLflow tracking URI: a server (http://host:5000) or a database "
        "(sqlite:///mlflow.db, relative to the working directory as in MLflow). None: MLFLOW_TRACKING_URI, else "
        "MLflow's default sqlite:///mlflow.db. Credentials: MLFLOW_TRACKING_USERNAME/PASSWORD in the environment.")
    wandb_mode: Literal["online", "offline"] | None = Field(
        None, description="W&B mode; offline writes RUN/wandb/ only (upload later with `wandb sync`). None: "
        "WANDB_MODE, else online (needs WANDB_API_KEY or `wandb login`).")
    wandb_entity: str | None = Field(None, min_length=1, description="W&B entity (user or team). None: your "
                                     "default entity.")

    @field_validator("report_to")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"tracking.report_to: lists a tracker twice ({value}); name each once")
        return value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and urlsplit(value).password:
            raise ValueError("tracking.mlflow_tracking_uri: holds a password; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the "
                             "environment instead (value not shown)")
        return value

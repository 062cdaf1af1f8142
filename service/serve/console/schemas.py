"""The shapes of the console's JSON API (``/console/api/...``), declared as each route's ``response_model``.

Values read from a run folder's files (``status.json``, the job spec, eval reports) are typed ``JsonValue``:
they are shown as the files have them, and a foreign or older file must still show, never fail the page.
"""

from __future__ import annotations

from typing import Literal

from pydantic import JsonValue

from ..schemas import FileObject, Schema


class SessionInfo(Schema):
    mode: Literal["local", "serve"]
    signed_in: bool
    read_only: bool
    name: str | None = None


class SignedIn(Schema):
    signed_in: Literal[True] = True
    name: str


class SignedOut(Schema):
    signed_in: Literal[False] = False


class ConsoleJob(Schema):
    """A row of the jobs list: the run's progress (``status.json``, the metrics' tail) and method (its spec),
    and, under ``hdpo-tune serve``, the job's record."""

    stage: JsonValue = None
    state: JsonValue = None
    step: JsonValue = None
    total_steps: int | None = None
    eta_s: float | None = None
    tokens_per_s: JsonValue = None
    error: JsonValue = None
    stages_done: JsonValue = None
    updated_at: JsonValue = None
    alpha: JsonValue = None
    target_entropy: JsonValue = None
    beta: JsonValue = None
    alpha_schedule: JsonValue = None
    lora: bool
    quantization: JsonValue = None
    max_steps: JsonValue = None
    learning_rate: JsonValue = None
    eval_tasks: bool
    model: JsonValue = None
    id: str
    name: str
    where: str | None = None
    status: JsonValue = None
    fine_tuned_model: str | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    alpha_value: float | None = None
    created_at: int
    finished_at: int | None = None
    cancel_requested: bool | None = None


class ConsoleCheckpoint(Schema):
    step: int
    created_at: int


class ConsoleJobDetails(ConsoleJob):
    """The job page: the list row, eval results, the export reports, checkpoints and downloadable parts."""

    eval: JsonValue = None
    reports: dict[str, JsonValue]
    checkpoints: list[ConsoleCheckpoint]
    parts: list[str]


class ConsoleJobs(Schema):
    data: list[ConsoleJob]
    read_only: bool


class Curve(Schema):
    x: list[int]
    y: list[float]


class MetricSeries(Schema):
    """Every metric's curve (downsampled keeping extremes); ``last_step`` is the next poll's ``after``."""

    rows: int
    last_step: int | None
    downsampled: bool
    curves: dict[str, Curve]


class ConsoleEvent(Schema):
    level: str
    message: str
    created_at: int | None


class ConsoleEvents(Schema):
    data: list[ConsoleEvent]


class Sweep(Schema):
    id: str
    name: str
    select: JsonValue = None
    winner: JsonValue = None
    jobs: list[str]


class Sweeps(Schema):
    data: list[Sweep]


class ComparedRun(Schema):
    id: str
    name: str
    alpha: JsonValue = None
    alpha_value: float | None = None
    target_entropy: JsonValue = None
    state: JsonValue = None
    eval: JsonValue = None
    score: float | None = None


class Comparison(Schema):
    select: str | None
    best: str | None
    runs: list[ComparedRun]


class Names(Schema):
    data: list[str]


class Files(Schema):
    data: list[FileObject]

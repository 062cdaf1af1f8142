"""The shapes the ``/v1`` API answers with: public pydantic models, declared as each route's ``response_model``.

They follow the official ``openai`` SDK's types field for field (``openai.types.fine_tuning.FineTuningJob``,
``FineTuningJobEvent``, ``jobs.FineTuningJobCheckpoint``, ``FileObject``, ``FileDeleted`` and the cursor pages;
``tests/serve/test_schemas.py`` validates real responses with the SDK's models and compares the field sets), so
the OpenAPI document at ``/openapi.json`` shows what a client really gets. What OpenAI's shapes cannot say rides
in ``hdpo_tune`` extension fields. Field order is the order of the JSON objects the service has always sent, so
the bytes of a response did not change when the hand-built dicts became these models.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
#: ``fine-tune``: preference pairs; ``user_data``: eval tasks; ``fine-tune-results``: a job's step_metrics.csv
FilePurpose = Literal["fine-tune", "user_data", "fine-tune-results"]
EventLevel = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]
Auto = Literal["auto"]


class Schema(BaseModel):
    """Response models are built by the server only: unknown fields are a bug, not input."""

    model_config = ConfigDict(extra="forbid")


class Listed(Schema):
    """An object lists page through by its ``id``."""

    id: str


# ---- files ------------------------------------------------------------------------------------------------------
class FileObject(Listed):
    """An uploaded file (``fine-tune``, ``user_data``) or a job's result file (``fine-tune-results``)."""

    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = Field(default="processed", description="Uploads are checked row by row before the "
                                         "answer, so a stored file is always processed.")
    status_details: None = None
    expires_at: None = None


class FileDeleted(Schema):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# ---- jobs -------------------------------------------------------------------------------------------------------
class JobError(Schema):
    """Why a job failed (``code``: ``invalid_input`` for a bad spec or data, else ``job_failed``)."""

    code: str
    message: str
    param: str | None = None


class JobHyperparameters(Schema):
    """OpenAI's top-level ``hyperparameters`` (the DPO ones are also in ``method.dpo.hyperparameters``)."""

    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    n_epochs: int | float | Auto | None = Field(default=None, description="A whole number, or a fraction of an epoch.")


class DpoHyperparameters(Schema):
    """The effective DPO hyperparameters, in OpenAI's names."""

    beta: float | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    n_epochs: int | float | Auto | None = None


class DpoMethod(Schema):
    hyperparameters: DpoHyperparameters


class MethodExtension(Schema):
    """The H-DPO settings OpenAI's ``method`` has no name for."""

    alpha: float | Auto = Field(description="H-DPO's entropy coefficient (1 is plain DPO), or 'auto'.")
    max_steps: int | None = None
    learning_rate: float
    lora: bool
    quantization: dict[str, JsonValue] | None = Field(default=None, description="The job's quantization section (QLoRA).")


class JobMethod(Schema):
    type: Literal["dpo"] = "dpo"
    dpo: DpoMethod | None = None
    hdpo_tune: MethodExtension | None = None


class JobExtension(Schema):
    """Where a job is: the pipeline's stage (``train:running``...), the last step reported, the attempts."""

    stage: str | None = None
    step: int = 0
    attempts: int = 0
    cancel_requested: bool = False
    started_at: int | None = None


class FineTuningJob(Listed):
    """A ``fine_tuning.job``; ``user_provided_suffix`` and ``hdpo_tune`` are this server's additions."""

    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str = Field(description="The id of the API key that created the job.")
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, str]] = Field(default_factory=list, description="Always empty: metrics are in "
                                               "the job's events and result file.")
    metadata: dict[str, str] | None = None
    method: JobMethod
    user_provided_suffix: str | None = None
    hdpo_tune: JobExtension


class FineTuningJobEvent(Listed):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: EventLevel
    message: str
    data: dict[str, JsonValue] | None = Field(default=None, description="A metrics event's step, losses and TRL-named "
                                              "metrics; a stage event's stage and state.")
    type: EventType


class CheckpointMetrics(Schema):
    step: int
    train_loss: float | None = None
    valid_loss: float | None = None
    train_mean_token_accuracy: None = None
    valid_mean_token_accuracy: None = None
    full_valid_loss: None = None
    full_valid_mean_token_accuracy: None = None


class FineTuningJobCheckpoint(Listed):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


# ---- lists, errors, health -------------------------------------------------------------------------------------
Item = TypeVar("Item", bound=Listed)


class CursorPage(Schema, Generic[Item]):
    """One page of a list, newest first: ask for the next with ``after=last_id`` while ``has_more``."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def cursor_page(items: list[Item], has_more: bool) -> CursorPage[Item]:
    return CursorPage[Item](data=items, has_more=has_more, first_id=items[0].id if items else None,
                            last_id=items[-1].id if items else None)


class ErrorDetail(BaseModel):
    """OpenAI's error object (a bad upload row adds ``line``)."""

    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Schema):
    error: ErrorDetail


#: the error answers every ``/v1`` route may give, for the OpenAPI document
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in ((400, "Bad request: the message names the field and the fix"), (401, "No or unknown API key"),
                         (404, "No such object (or another key's)"), (409, "Conflict with the object's state"))}


class Health(Schema):
    ok: bool
    workers: int
    running: int

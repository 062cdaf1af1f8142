"""The job spec: one strict pydantic model per concern, documented in its own JSON schema.

Each default is written once: a field the section shares with the core object it produces
(:mod:`hdpo_core.settings`: ``ModelOptions``, ``LoraOptions``, ``TrainOptions``, ``LossSettings``) takes the
core's default, the others are written here; ``hdpo:`` is built from ``LossSettings`` whole
(:mod:`service.spec.hdpo`). Sections hand the engine those objects (``.core``); code downstream never
``.get(key, default)``. Cross-field rules are ``model_validator``s that collect every problem
of their section and raise them at once, one per line. :func:`load_spec` adds what pydantic cannot know:
the job file's line numbers for malformed YAML, "did you mean" for misspelled keys, refusal of secrets, and
paths resolved against the job file's folder. Every problem comes out as one line
``field.path: what is wrong (got X); how to fix`` inside one :class:`InputError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from hdpo_core.choices import OnNonfinite, Scheduler, batch_split_problem
from hdpo_core.data import MAX_ROW_BYTES
from hdpo_core.errors import InputError
from hdpo_core.settings import LoraOptions, LossSettings, ModelOptions, TrainOptions
from service.spec.base import StrictModel
from service.spec.core_fields import core_defaults, shared_values
from service.spec.distributed import DistributedSpec
from service.spec.messages import find_secrets, format_validation_error, model_of, redact_secrets
from service.spec.paths import resolve_paths
from service.spec.quant import QuantizationSpec, quantization_problems
from service.spec.yaml_io import load_yaml

if TYPE_CHECKING:
    from hdpo_core.quant import QuantOptions

__all__ = ["JobSpec", "dump_yaml", "json_schema", "load_spec", "model_of", "redact_secrets",
           "spec_from_resolved", "spec_to_dict", "valid_sections"]


# --- Sections owned by other modules -------------------------------------------------------------------
from service.spec.eval import EvalSpec as EvalSection  # noqa: E402
from service.spec.hdpo import HdpoSpec  # noqa: E402
from service.spec.ship import ExportSpec as ExportSection  # noqa: E402
from service.spec.ship import HubSpec as HubSection  # noqa: E402
from service.spec.ship import MergeSpec as MergeSection  # noqa: E402
from service.spec.tracking import TrackingSpec  # noqa: E402

# --------------------------------------------------------------------------------------------------------

#: The defaults of the core objects these sections produce: written once, in :mod:`hdpo_core.settings`.
_MODEL, _LORA, _TRAIN = core_defaults(ModelOptions), core_defaults(LoraOptions), core_defaults(TrainOptions)


class ModelSpec(StrictModel):
    """The base model (policy initialisation and, frozen, the reference)."""


    name_or_path: str = Field(..., min_length=1, description="Local model folder (relative to the job file) or "
                              "Hub model id. The folder needs config.json, safetensors weights and a tokenizer. "
                              "A peft adapter folder (e.g. an SFT LoRA) is merged into its base first "
                              "(RUN/start_model): policy and reference then start from the adapted model.")
    revision: str | None = Field(
        _MODEL["revision"], description="Hub revision (branch, tag or commit) when name_or_path is a Hub "
        "id; ignored for local folders.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        _MODEL["dtype"], description="dtype the weights are loaded in. float32 is the exact, CPU-friendly "
        "choice.")
    trust_remote_code: bool = Field(
        _MODEL["trust_remote_code"], description="Run the model repo's own Python code (auto_map). Only "
        "turn on for repos you trust.")
    allow_pickle: bool = Field(
        _MODEL["allow_pickle"], description="Also load pickle weights (pytorch_model*.bin). Off: "
        "safetensors only, since unpickling can run arbitrary code.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        _MODEL["attn_implementation"], description="Attention kernel passed to transformers.")
    gradient_checkpointing: bool = Field(
        _MODEL["gradient_checkpointing"], description="Recompute activations in backward to save memory "
        "(about 30% slower).")


    def core(self, quantization: QuantOptions | None = None) -> ModelOptions:
        """The core's :class:`ModelOptions` for this section (``quantization``: from the quantization section,
        which needs the device)."""
        return ModelOptions(**shared_values(self, ModelOptions), quantization=quantization)


class LoraSpec(StrictModel):
    """LoRA adapters (peft). The reference model is the same network with the adapter switched off."""


    r: int = Field(_LORA["r"], gt=0, description="Adapter rank.")
    alpha: float = Field(_LORA["alpha"], gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(_LORA["dropout"], ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: str | list[str] = Field(
        _LORA["target_modules"], min_length=1, description="Module names to adapt, or 'all-linear' (every "
        "linear layer except the output head).")


    @property
    def core(self) -> LoraOptions:
        """The core's :class:`LoraOptions` for this section."""
        values = shared_values(self, LoraOptions)
        if not isinstance(self.target_modules, str):
            values["target_modules"] = tuple(self.target_modules)
        return LoraOptions(**values)


class DataSpec(StrictModel):
    """Preference pairs: TRL's standard (strings) or conversational (messages) format, explicit or implicit prompt."""


    train: str = Field(..., min_length=1, description="Training pairs: a .jsonl/.json/.parquet file, a "
                       "save_to_disk folder (relative to the job file) or a Hub dataset id.")
    eval: str | None = Field(None, description="Held-out pairs for the eval loss and reward accuracy, same forms "
                             "as train. Needed by train.eval_every.")
    max_length: int = Field(1024, gt=1, description="Max tokens of prompt + completion, per sequence.")
    overlong: Literal["truncate", "drop", "error"] = Field(
        "truncate", description="Pairs longer than max_length: cut the completions (the prompt is kept whole), "
        "drop the pair (counted), or stop with an error.")
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="Rows with missing/ill-typed fields, empty completions or chosen == rejected: stop "
        "with file:row, or skip them and report the count.")
    max_row_bytes: int = Field(MAX_ROW_BYTES, gt=0, le=1 << 30, description="Largest row accepted, in bytes of "
                               "text (a JSONL line, or a row's strings): a longer row is refused with file:row before "
                               "it is parsed or tokenized (a tokenizer's time grows fast with a long word, and a "
                               "50 MB one aborted the process). 1 MiB is far more than data.max_length tokens.")
    train_split: str = Field("train", min_length=1, description="Split read from a Hub dataset or DatasetDict folder.")
    eval_split: str = Field("test", min_length=1, description="Split read for data.eval from a Hub dataset or "
                            "DatasetDict folder.")


class TrainSpec(StrictModel):
    """Optimisation, checkpointing and logging. Step counts are optimizer steps."""


    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to run. Set this or epochs, not both; "
                                  "with neither, epochs is 1.")
    epochs: float | None = Field(None, gt=0, description="Passes over data.train (may be fractional). Set this or "
                                 "max_steps; filled in as 1 when neither is set.")
    batch_size: int = Field(
        _TRAIN["batch_size"], gt=0, description="Pairs per optimizer step, over all processes (global "
        "batch).")
    micro_batch_size: int = Field(
        _TRAIN["micro_batch_size"], gt=0, description="Pairs per forward pass; gradient accumulation steps "
        "= batch_size / (micro_batch_size x processes).")
    learning_rate: float = Field(_TRAIN["learning_rate"], gt=0, description="Peak AdamW learning rate.")
    scheduler: Scheduler = Field(
        _TRAIN["scheduler"], description="Learning-rate decay after warmup (to 0 for cosine/linear).")
    warmup_steps: int = Field(
        _TRAIN["warmup_steps"], ge=0, description="Linear warmup steps. Set this or warmup_ratio, not "
        "both.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of the total steps.")
    weight_decay: float = Field(_TRAIN["weight_decay"], ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(
        _TRAIN["max_grad_norm"], gt=0, description="Clip the global gradient norm to this; null = no "
        "clipping (the norm is still logged).")
    adam_beta1: float = Field(_TRAIN["adam_betas"][0], ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(_TRAIN["adam_betas"][1], ge=0, lt=1, description="AdamW beta2.")
    adam_eps: float = Field(_TRAIN["adam_eps"], gt=0, description="AdamW epsilon.")
    seed: int = Field(
        _TRAIN["seed"], ge=0, le=2**32 - 1, description="Seed for weights of new layers, dropout and data "
        "order.")
    log_every: int = Field(_TRAIN["log_every"], gt=0, description="Write metrics every this many steps.")
    save_every: int = Field(
        _TRAIN["save_every"], gt=0, description="Write a resumable checkpoint every this many steps.")
    eval_every: int | None = Field(
        _TRAIN["eval_every"], gt=0, description="Held-out loss and reward accuracy on data.eval every this "
        "many steps (logged as eval/*); null = none during training.")
    keep_checkpoints: int = Field(
        _TRAIN["keep_checkpoints"], ge=1, description="Most recent checkpoints kept on disk.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast compute dtype (accelerate). 'no' computes in model.dtype.")
    packing: bool = Field(
        _TRAIN["packing"], description="Pack sequences without padding; attention stays within each "
        "sequence (segment kernel, or a block-causal mask) instead of padding each to the longest.")
    row_tokens: int = Field(
        _TRAIN["row_tokens"], gt=0, description="Token budget of one packed row where attention needs a "
        "[rows, T, T] block mask (eager attention, model families without the segment kernel); a longer "
        "sequence gets its own row. With the segment kernel (sdpa on Llama/Qwen2/...) a micro-batch is one "
        "row and this is unused.")
    share_prompt: bool = Field(
        _TRAIN["share_prompt"], description="With packing, score chosen and rejected in one packed segment "
        "that holds the shared prompt once (rejected attends to the prompt, not to chosen); the same "
        "numbers, fewer tokens.")
    activation_offloading: bool = Field(
        _TRAIN["activation_offloading"], description="Keep the activations saved for backward in host "
        "memory (pinned) instead of GPU memory: larger batches for some speed; the same numbers. Pairs "
        "well with model.gradient_checkpointing off.")
    logps_chunk_size: int = Field(1024, gt=0, description="Positions per chunk when computing log-probs through "
                                  "the output head (bounds the logits memory).")
    precompute_ref_logps: bool = Field(False, description="Compute reference log-probs once before training and "
                                       "cache them on disk (keyed by model, data and tokenization).")
    ref_cache_dir: str | None = Field(None, min_length=1, description="Folder of the reference log-prob cache "
                                      "(shared between runs, keyed by model, data and tokenization); null = "
                                      "$HDPO_CACHE, else ~/.cache/hdpo-tune.")
    on_nonfinite: OnNonfinite = Field(
        _TRAIN["on_nonfinite"], description="A NaN/inf loss or gradient: skip that step (no update) or "
        "stop the run, naming the step.")

    def core(self, total_steps: int, *, loss: LossSettings) -> TrainOptions:
        """The core's :class:`TrainOptions` for a run of ``total_steps`` steps, carrying ``loss`` (the ``hdpo``
        section's core object). Shared fields go over by name; warmup and the Adam betas are resolved here."""
        values = shared_values(self, TrainOptions)
        values["warmup_steps"] = self.warmup_steps or int(round(self.warmup_ratio * total_steps))
        return TrainOptions(**values, total_steps=total_steps, adam_betas=(self.adam_beta1, self.adam_beta2),
                            loss=loss)

    @model_validator(mode="before")
    @classmethod
    def _default_epochs(cls, data: Any) -> Any:
        """Neither max_steps nor epochs means one epoch; written out so job.resolved.yaml says so."""
        if isinstance(data, dict) and data.get("max_steps") is None and data.get("epochs") is None:
            return {**data, "epochs": 1.0}
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> TrainSpec:
        issues = []
        if self.max_steps is not None and self.epochs is not None:
            issues.append(f"train.max_steps ({self.max_steps}) and train.epochs ({self.epochs}) are both set; "
                          "choose one")
        split = batch_split_problem(self.batch_size, self.micro_batch_size, processes=1)
        if split:
            issues.append(split)
        if self.warmup_steps and self.warmup_ratio:
            issues.append(f"train.warmup_steps ({self.warmup_steps}) and train.warmup_ratio ({self.warmup_ratio}) "
                          "are both set; can't provide both, choose one")
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            issues.append(f"train.warmup_steps ({self.warmup_steps}) must be smaller than train.max_steps "
                          f"({self.max_steps}); lower warmup_steps")
        if self.ref_cache_dir is not None and not self.precompute_ref_logps:
            issues.append("train.ref_cache_dir is set but train.precompute_ref_logps is false; set "
                          "precompute_ref_logps: true or remove ref_cache_dir")
        _raise_issues(issues)
        return self


class OutputSpec(StrictModel):
    """Where the run folder goes."""


    dir: str = Field(..., min_length=1, description="Run folder (relative to the job file): checkpoints, metrics, "
                     "status.json, final model. Rerunning the same job here resumes it.")


class JobSpec(StrictModel):
    """One H-DPO fine-tuning job: ``hdpo-tune run job.yaml``."""


    model: ModelSpec = Field(..., description="Base model.")
    lora: LoraSpec | None = Field(None, description="LoRA settings; null or absent = full fine-tuning.")
    quantization: QuantizationSpec | None = Field(None, description="Load the base k-bit (QLoRA, bitsandbytes); "
                                                  "needs lora:. Absent = the base in model.dtype.")
    data: DataSpec = Field(..., description="Preference data.")
    hdpo: HdpoSpec = Field(default_factory=HdpoSpec, description="H-DPO loss.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training loop.")
    output: OutputSpec = Field(..., description="Run folder.")
    eval: EvalSection | None = Field(None, description="Evaluation stage after training.")
    merge: MergeSection | None = Field(None, description="Merge LoRA adapters into the base weights.")
    export: ExportSection | None = Field(None, description="Export formats (ONNX, GGUF).")
    hub: HubSection | None = Field(None, description="Push to the Hugging Face Hub (token from HF_TOKEN only).")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec,
                                         description="Processes and backend for `hdpo-tune launch`.")
    tracking: TrackingSpec | None = Field(None, description="Experiment tracking: MLflow, Weights & Biases, "
                                          "trackio (absent = metrics.jsonl and TensorBoard only).")

    @model_validator(mode="after")
    def _cross_section(self) -> JobSpec:
        issues = []
        if self.train.eval_every is not None and self.data.eval is None:
            issues.append(f"train.eval_every ({self.train.eval_every}) is set but data.eval is not; add data.eval "
                          "or remove train.eval_every")
        if self.train.mixed_precision == "fp16" and self.model.dtype == "float16" and self.lora is None:
            issues.append("train.mixed_precision: fp16 with model.dtype: float16 and full fine-tuning cannot "
                          "unscale float16 gradients; use model.dtype: float32 (or bfloat16 without mixed "
                          "precision)")
        issues += quantization_problems(self.quantization, has_lora=self.lora is not None,
                                        backend=self.distributed.backend)
        _raise_issues(issues)
        return self


def _rerun_cross_field_rules(data: dict[str, Any], exc: ValidationError) -> list[str]:
    """pydantic skips a section's cross-field rules once one of its fields is invalid. Rerun them on the valid
    fields so one pass reports everything, keeping only lines that do not involve an invalid field."""
    bad: dict[str, set[str]] = {}
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        if len(loc) >= 2 and isinstance(loc[0], str) and isinstance(loc[1], str):
            bad.setdefault(loc[0], set()).add(loc[1])
    lines: list[str] = []
    for section, fields in bad.items():
        field = JobSpec.model_fields.get(section)
        model = model_of(field.annotation) if field is not None else None
        raw = data.get(section)
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or not isinstance(raw, dict):
            continue
        try:
            model.model_validate({k: v for k, v in raw.items() if k not in fields})
        except ValidationError as again:
            for err in again.errors(include_url=False):
                if err["type"] != "value_error":
                    continue
                for line in str(err["ctx"]["error"]).split("\n"):
                    if not any(re.search(rf"\b{section}\.{re.escape(str(f))}\b", line) for f in fields):
                        lines.append(line)
    return lines



def _raise_issues(issues: list[str]) -> None:
    if issues:
        raise ValueError("\n".join(issues))


# --- loading ---------------------------------------------------------------------------------------------

def load_spec(path: str | os.PathLike[str]) -> JobSpec:
    """Read, check and resolve a job file. Raises :class:`InputError` listing every problem, one per line."""
    job = Path(path)
    data = load_yaml(job)
    if data is None:
        raise InputError(f"{job}: job file is empty; start from `hdpo-tune init`")
    if not isinstance(data, dict):
        raise InputError(f"{job}: job file must be a YAML mapping with sections model, data, train, output "
                         f"(got {type(data).__name__}); start from `hdpo-tune init`")
    return _validated(resolve_paths(data, job.resolve().parent))


def spec_from_resolved(data: object, source: Path) -> JobSpec:
    """A run folder's ``job.resolved.yaml`` (already parsed, paths already absolute) as a :class:`JobSpec`;
    problems are prefixed with ``source`` so the user knows which file is wrong."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected the resolved job spec (a mapping) that `hdpo-tune run` writes")
    try:
        return _validated(data)
    except InputError as exc:
        raise InputError(f"{source}: " + "; ".join(exc.message.splitlines())) from None


def _validated(data: dict[str, Any]) -> JobSpec:
    issues: list[str] = []
    data = find_secrets(data, "", issues)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        issues.extend(format_validation_error(exc, JobSpec))
        issues.extend(_rerun_cross_field_rules(data, exc))
        spec = None
    if issues or spec is None:
        raise InputError("\n".join(redact_secrets(i) for i in dict.fromkeys(issues)))
    return spec


def valid_sections(path: str | os.PathLike[str]) -> dict[str, BaseModel]:
    """Best effort for a job file that failed :func:`load_spec`: every section that is valid on its own.

    ``validate`` uses it to check the model folder and data files even when another section is wrong, so one
    run reports everything. Returns ``{}`` when the file itself cannot be read.
    """
    job = Path(path)
    try:
        data = load_yaml(job)
    except InputError:
        return {}
    if not isinstance(data, dict):
        return {}
    data = resolve_paths(find_secrets(data, "", []), job.resolve().parent)
    out: dict[str, BaseModel] = {}
    for name, info in JobSpec.model_fields.items():
        model = model_of(info.annotation)
        if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(data.get(name), dict):
            try:
                out[name] = model.model_validate(data[name])
            except ValidationError:
                continue
    return out


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """JSON-mode dump (plain types, every default filled in): what job.resolved.yaml holds."""
    return spec.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the job file (`hdpo-tune schema`)."""
    schema = JobSpec.model_json_schema()
    schema["title"] = "hdpo-tune job spec"
    return schema


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text of a plain dict, key order kept (for job.resolved.yaml)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def load_sections(path: str | os.PathLike[str], names: tuple[str, ...]) -> dict[str, BaseModel | None]:
    """Only the ``names`` sections of a job file, each validated strictly on its own (paths resolved against
    the file's folder); an absent section is None. For commands that use part of a job (``hdpo-tune eval
    --job``): a job file without ``output:`` is fine there, a wrong value in a used section is not."""
    job = Path(path)
    data = load_yaml(job)
    if not isinstance(data, dict):
        raise InputError(f"{job}: job file must be a YAML mapping of sections; start from `hdpo-tune init`")
    return sections_of(resolve_paths(data, job.resolve().parent), names, source=job)


def sections_of(data: dict[str, Any], names: tuple[str, ...], *, source: Path) -> dict[str, BaseModel | None]:
    """Validate the ``names`` sections of parsed job data (see :func:`load_sections`)."""
    from pydantic import create_model

    fields: dict[str, Any] = {n: (model_of(JobSpec.model_fields[n].annotation) | None, None) for n in names}
    partial = create_model("PartialJobSpec", __base__=StrictModel, **fields)
    try:
        parsed = partial.model_validate({n: data.get(n) for n in names})
    except ValidationError as exc:
        raise InputError("\n".join(f"{source}: {line}" for line in format_validation_error(exc, partial))) from None
    return {n: getattr(parsed, n) for n in names}

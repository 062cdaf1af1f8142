"""From a request to the job spec a job process runs, with every path decided by the server.

Both kinds of request end in one full spec dict that names files by id and models by name; :func:`resolve_refs`
turns those into paths under the data folder (or Hub ids) and refuses anything else, then the spec is written
to ``DATA/runs/JOB/job.yaml`` and checked with the pipeline's own :func:`service.spec.job.load_spec` (so the
messages are the CLI's). The path fields are the ones ``load_spec`` resolves (``PATH_FIELDS``; a test keeps
the two lists equal), so no field can point a job outside the data folder.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from hdpo_core.errors import InputError
from hdpo_core.layout import FINAL, JOB_FILE, MERGED
from service.runfolder.ownership import claim
from service.spec.job import JobSpec, dump_yaml, load_spec

from . import store
from .config import ServeConfig
from .errors import ApiError

#: (section, field, kind): every path-like field of the spec. kind: model | data | forbidden
PATH_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("model", "name_or_path", "model"), ("data", "train", "data"), ("data", "eval", "data"),
    ("eval", "tasks", "data"), ("eval", "eval_pairs", "data"), ("output", "dir", "forbidden"),
    ("train", "ref_cache_dir", "forbidden"), ("distributed", "accelerate_config", "forbidden"))
#: sections a served job may not set: the server decides where it writes, pushes nothing, and where metrics go
#: (a tracking URI such as sqlite:///PATH writes anywhere the server can, an online tracker sends data out)
FORBIDDEN_SECTIONS = {
    "output": "the run folder is DATA/runs/JOB",
    "hub": "the server pushes nothing; download the artifacts instead",
    "tracking": "experiment tracking is set by the administrator for every job (hdpo-tune serve --report-to, "
                "--mlflow-tracking-uri)",
}
#: options that would run code outside the sandbox: from the model repo, or model-written code where
#: bubblewrap cannot start (the administrator's choice: hdpo-tune serve --allow-unsandboxed-code)
FORBIDDEN_FLAGS = {
    ("model", "trust_remote_code"): "it would run code from the model repository on the server",
    ("model", "allow_pickle"): "it would run code from the model repository on the server",
    ("eval", "allow_unsandboxed_code"): "the code sandbox is the administrator's to weaken, for every job "
                                        "(hdpo-tune serve --allow-unsandboxed-code), never a request's",
    ("eval", "lm_eval"): "lm-evaluation-harness imports task code from its task folders and downloads data sets on "
                         "the server; run `hdpo-tune eval --lm-eval` on the downloaded model instead",
}

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
HUB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
SUFFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def resolve_model(config: ServeConfig, db: Session, owner: str, name: str, where: str = "model") -> str:
    """A model name -> what ``model.name_or_path`` gets: a folder under a model root, the merged model of one
    of the caller's finished jobs (its ``fine_tuned_model``), or a Hub id. Never a client-given path."""
    if name.startswith("ft:"):
        job = store.succeeded_job(db, owner, name)
        for sub in (MERGED, FINAL):  # final/ may be a LoRA adapter: the pipeline merges it into its base
            if job is not None and (config.runs_dir / job.id / sub).is_dir():
                return str(config.runs_dir / job.id / sub)
    elif NAME_RE.fullmatch(name) and ".." not in name:
        for root in config.model_roots:
            if (root / name).is_dir():
                return str(root / name)
    if config.allow_hub and HUB_RE.fullmatch(name) and ".." not in name:
        return name
    names = sorted({p.name for root in config.model_roots if root.is_dir() for p in root.iterdir() if p.is_dir()})
    hub = ", or a Hub id (org/name)" if config.allow_hub else ""
    raise ApiError(400, f"{where}: model '{name}' is not available; use one of {names or 'none configured'}, a "
                   f"fine_tuned_model of one of your succeeded jobs{hub}", param="model", code="model_not_found")


def resolve_data(config: ServeConfig, db: Session, owner: str, ref: str, where: str, *,
                 purposes: tuple[str, ...]) -> str:
    """A data reference -> a path under DATA/files (the caller's upload) or a Hub dataset id."""
    from .files_api import training_path

    if ref.startswith("file-"):
        row = store.owned_file(db, owner, ref)
        if row is None:
            raise ApiError(400, f"{where}: no such file {ref}; upload it first (files.create)", param=where,
                           code="file_not_found")
        if row.purpose not in purposes:
            raise ApiError(400, f"{where}: file {ref} was uploaded with purpose '{row.purpose}'; this field needs "
                           f"{' or '.join(purposes)}", param=where, code="invalid_file_purpose")
        return str(training_path(config.files_dir, row))
    if config.allow_hub and HUB_RE.fullmatch(ref) and ".." not in ref:
        return ref
    raise ApiError(400, f"{where}: '{ref}' is not a file id of yours (file-...){' or a Hub dataset id' if config.allow_hub else ''}; "
                   "paths on the server cannot be used: upload the file and pass its id", param=where,
                   code="invalid_path")


def resolve_refs(config: ServeConfig, db: Session, owner: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` with every path field resolved by the server's rules; 400 for anything else."""
    out = copy.deepcopy(spec)
    for section, why in FORBIDDEN_SECTIONS.items():
        if out.get(section) is not None:
            raise ApiError(400, f"{section}: not allowed in a served job ({why}); remove it", param=section,
                           code="forbidden_field")
    for (section, key), why in FORBIDDEN_FLAGS.items():
        if isinstance(out.get(section), dict) and out[section].get(key) not in (None, False):
            raise ApiError(400, f"{section}.{key}: not allowed in a served job ({why}); remove it",
                           param=f"{section}.{key}", code="forbidden_field")
    for section, key, kind in PATH_FIELDS:
        sec = out.get(section)
        if not isinstance(sec, dict) or sec.get(key) is None:
            continue
        value, where = sec[key], f"{section}.{key}"
        if kind == "forbidden" or not isinstance(value, str):
            raise ApiError(400, f"{where}: not allowed in a served job (the server decides where jobs read and "
                           "write); remove it", param=where, code="forbidden_field")
        if kind == "model":
            sec[key] = resolve_model(config, db, owner, value, where)
        else:
            purposes = ("user_data", "fine-tune") if (section, key) == ("eval", "tasks") else ("fine-tune",)
            sec[key] = resolve_data(config, db, owner, value, where, purposes=purposes)
    return out


def admin_settings(config: ServeConfig, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the administrator's settings laid over it (after :func:`resolve_refs` refused a caller's)."""
    out = dict(spec)
    if config.allow_unsandboxed_code and isinstance(out.get("eval"), dict):
        out["eval"] = {**out["eval"], "allow_unsandboxed_code": True}
    if config.report_to:
        out["tracking"] = {"report_to": list(config.report_to), "project": "hdpo-tune-serve", "run_name": job_id,
                           **({"mlflow_tracking_uri": config.mlflow_tracking_uri} if config.mlflow_tracking_uri
                              else {})}
    return out


def write_spec(config: ServeConfig, job_id: str, spec: dict[str, Any]) -> JobSpec:
    """Write ``DATA/runs/JOB/job.yaml`` (output.dir = that folder) and check it as ``hdpo-tune run`` would.
    On a bad spec the folder is removed and the pipeline's own messages come back as a 400."""
    run_dir = config.runs_dir / job_id
    run_dir.mkdir(parents=True, exist_ok=False)
    claim(run_dir)  # a run folder carries hdpo-tune's marker, so `hdpo-tune run` accepts job.yaml and job.log
    job_file = run_dir / JOB_FILE
    job_file.write_text(dump_yaml({**spec, "output": {"dir": "."}}), encoding="utf-8")
    try:
        return load_spec(job_file)
    except InputError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        message = config.public(exc.message)
        raise ApiError(400, message, param="spec", code="invalid_spec") from None


def run_dir_of(config: ServeConfig, job_id: str) -> Path:
    return config.runs_dir / job_id

"""`hdpo-tune validate JOB`: a dry run that finds every problem before any GPU time is spent.

It checks, in order, and collects rather than stopping at the first problem:

1. the spec (schema, cross-field rules, secrets): :func:`service.spec.job.load_spec`;
2. the model: a local folder with config.json that ``AutoConfig`` reads (honouring trust_remote_code),
   safetensors weights (pickle only if allowed), a tokenizer with eos and pad tokens (and a chat template
   for conversational data); a Hub id needs the network (a clear message when offline);
3. the data files: every row normalised and tokenised with the spec's max_length/overlong/on_bad_row, so
   bad rows are listed with file:row;
4. the run folder: it must not hold a different job's run.

It writes nothing: no run folder, no cache, no status file.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from hdpo_core.data import PreferenceRow, iter_raw_rows, normalise_row
from hdpo_core.errors import HdpoError, InputError
from hdpo_core.tokenize import largest_token, token_id_problems, tokenize_rows
from service.runfolder.record import RunDir
from service.runfolder.run import LATER_INPUTS, input_kind_problems
from service.spec.job import (
    DataSpec,
    JobSpec,
    ModelSpec,
    load_spec,
    redact_secrets,
    spec_to_dict,
    valid_sections,
)
from service.stages.tracking import missing_packages
from service.validate.eval_inputs import eval_task_problems

MAX_ROW_PROBLEMS = 20
SAFETENSORS_HEADER_BYTES = 100 << 20  # the safetensors library's own limit on a header


@dataclass
class Report:
    """Problems (each one line, naming the field or file:row) and a short summary of what was checked."""

    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    embedding_rows: int | None = None  # the model's input embedding rows (config vocab_size), when known
    max_token: tuple[int, str] | None = None  # the largest token id in the data and the row it comes from


def validate_job(path: str | os.PathLike[str]) -> list[str]:
    """Every problem with the job at ``path`` (empty list = ready to run)."""
    return check_job(path).problems


def check_job(path: str | os.PathLike[str]) -> Report:
    """Run all checks; see the module docstring."""
    report = Report()
    try:
        spec: JobSpec | None = load_spec(path)
        sections: dict[str, Any] = {"model": spec.model, "data": spec.data} if spec else {}
    except InputError as exc:
        report.problems.extend(exc.message.splitlines())
        spec, sections = None, valid_sections(path)  # still check the model and data sections that are valid
    model, data = sections.get("model"), sections.get("data")
    tokenizer = _check_model(model, report) if isinstance(model, ModelSpec) else None
    formats = _check_data(data, tokenizer, report) if isinstance(data, DataSpec) else set()
    _check_tokenizer(tokenizer, formats, report)
    _check_token_ids(tokenizer, report)
    if spec is not None:
        report.problems.extend(input_kind_problems(spec, LATER_INPUTS))  # data and model are read below
        _check_run_folder(spec, report)
        _check_sandbox(spec, report)
        report.problems.extend(eval_task_problems(spec, report.summary))
        _check_quantization(spec, report)
        if spec.tracking is not None:
            report.problems.extend(missing_packages(spec.tracking))
    report.problems = [redact_secrets(p) for p in report.problems]
    return report


def _check_sandbox(spec: JobSpec, report: Report) -> None:
    """``verifier: code`` needs the bubblewrap sandbox here, or the job's explicit opt-out."""
    from hdpo_core.eval.sandbox import SandboxUnavailable, require_sandbox

    ev = spec.eval
    if ev is not None and ev.enabled and ev.tasks and ev.verifier == "code":
        try:
            require_sandbox(ev.allow_unsandboxed_code)
        except SandboxUnavailable as exc:
            report.problems.append(exc.message)


def _check_quantization(spec: JobSpec, report: Report) -> None:
    """QLoRA: the backend is installed and the base can be quantized (no weights are loaded)."""
    if spec.quantization is None:
        return
    from hdpo_core.quant import check_base

    try:
        check_base(spec.model.name_or_path, trust_remote_code=spec.model.trust_remote_code)
    except InputError as exc:
        report.problems.append(exc.message)
        return
    q = spec.quantization
    kind = f"4-bit {q.quant_type}" if q.bits == 4 else "8-bit"
    report.summary.append(f"quantization: base loaded {kind} (bitsandbytes), LoRA on top (QLoRA)")


def run_validate(path: str | os.PathLike[str]) -> int:
    """The command: print every problem to stderr (exit code 2) or a summary to stdout (0)."""
    import typer

    report = check_job(path)
    if report.problems:
        n = len(report.problems)
        typer.echo(f"{path}: {n} problem{'s' if n > 1 else ''}:", err=True)
        for problem in report.problems:
            typer.echo(f"  {problem}", err=True)
        return InputError.exit_code
    typer.echo(f"{path}: OK")
    for line in report.summary:
        typer.echo(f"  {line}")
    return 0


# --- model ---------------------------------------------------------------------------------------------

def _short_exc(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _check_model(m: ModelSpec, report: Report) -> Any:
    """Check the model folder or Hub id; return the tokenizer when it loads (else None)."""
    p = Path(m.name_or_path)
    if not p.is_absolute():  # load_spec made every local path absolute: this is a Hub id
        return _check_hub_model(m, report)
    if not p.exists():
        report.problems.append(f"model.name_or_path: model folder {p} not found; check the path (relative paths "
                               "are resolved from the job file's folder)")
        return None
    if not p.is_dir():
        report.problems.append(f"model.name_or_path: {p} is a file; point it at a model folder (the output of "
                               "save_pretrained) or a Hub id")
        return None
    from hdpo_core.export.merge import is_bare_adapter
    from hdpo_core.inputs import check_model_folder

    try:
        check_model_folder(p)
    except InputError as exc:
        report.problems.append(f"model.name_or_path: {exc.message}")
        return None
    if is_bare_adapter(p):
        return _check_adapter(m, p, report)
    if not (p / "config.json").is_file():
        report.problems.append(f"model.name_or_path: {p} has no config.json; point it at a Hugging Face model "
                               "folder (save_pretrained output) or a peft adapter folder")
    else:
        _load_config(m, str(p), report)
    _check_weights(m, p, report)
    return _load_tokenizer(m, str(p), report)


def _check_adapter(m: ModelSpec, p: Path, report: Report) -> Any:
    """A peft adapter folder (e.g. an SFT LoRA): its base must load; training merges the two first."""
    from hdpo_core.export.merge import base_model_of
    from hdpo_core.model import has_tokenizer_files

    try:
        base = base_model_of(p)
    except (OSError, ValueError) as exc:
        report.problems.append(f"model.name_or_path: {p}/adapter_config.json is unreadable ({_short_exc(exc)})")
        return None
    if not base:
        report.problems.append(f"model.name_or_path: {p}/adapter_config.json names no base model "
                               "(base_model_name_or_path); set it to the base model's folder or Hub id")
        return None
    report.summary.append(f"model: peft adapter {p} on base {base}; merged into RUN/start_model before training, "
                          "so policy and reference start from the adapted model")
    tokenizer = _check_model(m.model_copy(update={"name_or_path": base}), report)
    if has_tokenizer_files(p):
        tokenizer = _load_tokenizer(m, str(p), report)
    return tokenizer


def _load_config(m: ModelSpec, where: str, report: Report) -> None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=m.trust_remote_code, revision=m.revision)
    except Exception as exc:  # transformers raises many types for bad configs
        if "trust_remote_code" in str(exc) and not m.trust_remote_code:
            report.problems.append(f"model.trust_remote_code: {m.name_or_path} needs its own Python code; set "
                                   "model.trust_remote_code: true only if you trust that repo")
        else:
            report.problems.append(f"model.name_or_path: cannot read the model config of {m.name_or_path} "
                                   f"({_short_exc(exc)}); fix config.json")
        return
    report.summary.append(f"model: {m.name_or_path} ({config.model_type}, dtype {m.dtype})")
    rows = getattr(config.get_text_config(), "vocab_size", None)
    report.embedding_rows = rows if isinstance(rows, int) else None


def _safetensors_params(files: list[Path]) -> int | None:
    """Parameter count from safetensors headers (no tensor is read)."""
    total = 0
    try:
        for f in files:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > SAFETENSORS_HEADER_BYTES:  # a damaged length would make read(n) allocate n bytes
                    return None
                header = json.loads(fh.read(n))
            total += sum(prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total


def _check_weights(m: ModelSpec, folder: Path, report: Report) -> None:
    safe = sorted(folder.glob("*.safetensors"))
    pickle = sorted(folder.glob("pytorch_model*.bin")) + sorted(folder.glob("*.pt"))
    if safe:
        params = _safetensors_params(safe)
        if params is None:
            report.problems.append(f"model.name_or_path: {safe[0]} is not a valid safetensors file; re-save the "
                                   "model with save_pretrained")
        else:
            report.summary.append(f"model weights: {params:,} parameters in {len(safe)} safetensors file(s)")
    elif pickle and not m.allow_pickle:
        report.problems.append(f"model.allow_pickle: {folder} has only pickle weights ({pickle[0].name}), which can "
                               "run code when loaded; convert them to safetensors, or set model.allow_pickle: true "
                               "if you trust the files")
    elif not pickle:
        report.problems.append(f"model.name_or_path: {folder} has no weights (model.safetensors); point it at a "
                               "folder written by save_pretrained")


def _load_tokenizer(m: ModelSpec, where: str, report: Report) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=m.trust_remote_code, revision=m.revision)
    except Exception as exc:  # many types: missing files, bad JSON, remote code
        report.problems.append(f"model.name_or_path: cannot load the tokenizer of {m.name_or_path} "
                               f"({_short_exc(exc)}); the folder needs tokenizer.json and tokenizer_config.json")
        return None


def _check_hub_model(m: ModelSpec, report: Report) -> Any:
    from huggingface_hub import is_offline_mode

    if is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        report.problems.append(f"model.name_or_path: '{m.name_or_path}' is not a local folder and the Hub is "
                               "offline (HF_HUB_OFFLINE=1); download the model first and point name_or_path at "
                               "the folder")
        return None
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(m.name_or_path, revision=m.revision)
    except Exception as exc:  # network and repo errors come in many types
        report.problems.append(f"model.name_or_path: cannot reach Hub model '{m.name_or_path}' "
                               f"({type(exc).__name__}); check the id, the revision and your network")
        return None
    if not any(f.endswith(".safetensors") for f in files) and not m.allow_pickle:
        report.problems.append(f"model.allow_pickle: Hub model '{m.name_or_path}' has no safetensors weights; "
                               "pick a repo with safetensors or set model.allow_pickle: true if you trust it")
    _load_config(m, m.name_or_path, report)
    return _load_tokenizer(m, m.name_or_path, report)


def _check_tokenizer(tok: Any, formats: set[str], report: Report) -> None:
    if tok is None:
        return
    if tok.eos_token_id is None:
        report.problems.append("model.name_or_path: the tokenizer has no eos_token; set eos_token in "
                               "tokenizer_config.json (completions must end with EOS)")
    if tok.pad_token_id is None:
        report.problems.append("model.name_or_path: the tokenizer has no pad_token; set pad_token in "
                               "tokenizer_config.json (for example to the eos token)")
    if "conversational" in formats and not getattr(tok, "chat_template", None):
        report.problems.append("data: conversational (message list) rows need a chat template, but the tokenizer "
                               "has none; add chat_template.jinja to the model folder or use standard string rows")


# --- data ----------------------------------------------------------------------------------------------

def _named(field_path: str, message: str) -> str:
    return message if message.startswith(("data", "model.", "train.")) else f"{field_path}: {message}"


def _check_data(d: DataSpec, tok: Any, report: Report) -> set[str]:
    """Check data.train and data.eval; return the formats seen."""
    formats: set[str] = set()
    for name, path, split in (("data.train", d.train, d.train_split), ("data.eval", d.eval, d.eval_split)):
        if path is None:
            continue
        rows = _read_rows(name, path, split, d, report)
        formats |= {r.format for r in rows}
        if rows and _tokenizer_usable(tok, rows[0].format):
            _tokenize(name, rows, tok, d, report)
    return formats


def _read_rows(name: str, path: str, split: str, d: DataSpec, report: Report) -> list[PreferenceRow]:
    rows: list[PreferenceRow] = []
    bad: list[str] = []
    try:
        for location, raw in iter_raw_rows(path, split=split, max_row_bytes=d.max_row_bytes):
            try:
                rows.append(normalise_row(location, raw))
            except InputError as exc:
                bad.append(exc.message)
    except HdpoError as exc:
        report.problems.append(_named(name, exc.message))
        return []
    _report_bad_rows(name, bad, d, report, what="bad rows")
    if not rows:
        if not bad:
            report.problems.append(f"{name}: {path} is empty; it needs at least one preference pair")
        elif d.on_bad_row == "skip":
            report.problems.append(f"{name}: every row of {path} is bad ({len(bad)}), so none is left; fix the rows")
        return []
    fmts = {r.format for r in rows}
    if len(fmts) > 1:
        report.problems.append(f"{name}: {path} mixes standard (string) and conversational (message list) rows; "
                               "use one format")
        return []
    report.summary.append(f"{name}: {len(rows)} pairs ({rows[0].format}) in {path}")
    return rows


def _report_bad_rows(name: str, bad: list[str], d: DataSpec, report: Report, *, what: str) -> None:
    if not bad:
        return
    if d.on_bad_row == "skip":
        report.summary.append(f"{name}: {len(bad)} {what} will be skipped (data.on_bad_row: skip)")
        return
    report.problems.extend(_named(name, b) for b in bad[:MAX_ROW_PROBLEMS])
    if len(bad) > MAX_ROW_PROBLEMS:
        report.problems.append(f"{name}: ... and {len(bad) - MAX_ROW_PROBLEMS} more {what}; fix them or set "
                               "data.on_bad_row: skip")


def _check_token_ids(tok: Any, report: Report) -> None:
    """Every id the run feeds the model must have an embedding row (the core's rule, the train stage's too)."""
    rows = report.embedding_rows
    if tok is None or rows is None:
        return
    report.problems.extend(token_id_problems(rows, eos_token_id=getattr(tok, "eos_token_id", None),
                                             pad_token_id=getattr(tok, "pad_token_id", None),
                                             largest=report.max_token))


def _tokenizer_usable(tok: Any, fmt: str) -> bool:
    if tok is None or tok.eos_token_id is None or tok.pad_token_id is None:
        return False
    return fmt != "conversational" or bool(getattr(tok, "chat_template", None))


def _tokenize(name: str, rows: list[PreferenceRow], tok: Any, d: DataSpec, report: Report) -> None:
    """Tokenise row by row so that every bad row is listed, and overlong drops are told from errors."""
    from hdpo_core.data import RowProblems

    bad: list[str] = []
    kept = dropped = truncated = tokens = longest = 0
    for row in rows:
        seen = RowProblems()
        try:
            pairs, _ = tokenize_rows([row], tok, max_length=d.max_length, overlong=d.overlong,
                                     on_bad_row="error", problems=seen)
        except InputError as exc:
            if seen.skipped.get("overlong"):
                dropped += 1
            else:
                bad.append(exc.message)
            continue
        except Exception as exc:  # a tokenizer or chat template raising its own error types
            bad.append(f"{row.source}: cannot tokenize the row ({_short_exc(exc)})")
            continue
        truncated += seen.skipped.get("truncated", 0)
        top = largest_token(pairs)
        if top is not None and (report.max_token is None or top[0] > report.max_token[0]):
            report.max_token = top
        kept += 1
        tokens += pairs[0].num_tokens
        longest = max(longest, len(pairs[0].prompt_ids) + max(len(pairs[0].chosen_ids), len(pairs[0].rejected_ids)))
    _report_bad_rows(name, bad, d, report, what="rows that cannot be tokenized")
    if not kept and not bad:
        report.problems.append(f"{name}: every pair is longer than data.max_length={d.max_length} and "
                               "data.overlong: drop drops them all; raise max_length or use overlong: truncate")
        return
    notes = [f"{n} {w}" for n, w in ((dropped, "dropped as overlong"), (truncated, "truncated")) if n]
    report.summary.append(f"{name}: {tokens:,} tokens, longest sequence {longest} (max_length {d.max_length})"
                          + (f"; {', '.join(notes)}" if notes else ""))


# --- run folder ------------------------------------------------------------------------------------------

def _check_run_folder(spec: JobSpec, report: Report) -> None:
    from service.runfolder import ownership
    from service.runfolder.run import input_paths

    out = Path(spec.output.dir)
    try:
        ownership.check_location(out)
        ownership.check_inputs_not_outputs(out, input_paths(spec))
        if out.is_dir():
            ownership.check_entries(out)  # a link where the run writes is refused by `run`: say so here
    except InputError as exc:
        report.problems.extend(exc.message.splitlines())
        return
    if out.is_dir() and not ownership.is_owned(out) and any(out.iterdir()):
        report.problems.append(f"output.dir: {out} already holds files that hdpo-tune did not write (no "
                               f"{ownership.MARKER}); choose a new or empty folder")
        return
    try:
        RunDir(out).check_compatible(spec_to_dict(spec))
    except InputError as exc:
        report.problems.append(exc.message)
        return
    existing = out if out.exists() else next((a for a in out.parents if a.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        report.problems.append(f"output.dir: cannot write to {existing}; pick a writable folder")
        return
    status = RunDir(out).read_status()
    if status is not None:
        report.summary.append(f"output.dir: {out} holds this job's run ({status.get('stage')}: "
                              f"{status.get('state')} at step {status.get('step')}); running resumes it")
    else:
        report.summary.append(f"output.dir: {out} (new run)")

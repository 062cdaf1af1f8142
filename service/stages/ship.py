"""Ship stages of a finished run: merge -> model card/provenance -> ONNX export + validation -> Hub push.

:func:`merge`, :func:`export` and :func:`push` take a :class:`~service.runfolder.run.Run` (the typed spec and the
folder), whether the pipeline opened it from a job file or ``hdpo-tune merge|export|push RUN_DIR`` from the
run folder; ``merge_run``/``export_run``/``push_run`` open the folder and call them. Layout: ``RUN/final/``
(adapter or full model) -> ``RUN/merged/`` -> ``RUN/onnx/`` and ``RUN/gguf/``. Heavy imports (torch, transformers) happen
inside the functions: ``generate_onnx`` must stay torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hdpo_core import artifact, layout
from hdpo_core.errors import InputError, RunError
from hdpo_core.io import read_json
from hdpo_core.public_paths import public_paths
from service.runfolder.run import Run
from service.spec.quant import quant_options
from service.spec.ship import ExportSpec, HubSpec, MergeSpec

Log = Callable[[str], None]
REPORT = layout.EXPORT_REPORT


def _sections(run: Run) -> tuple[MergeSpec, ExportSpec, HubSpec]:
    """The ship sections of the run's spec; an absent section means its defaults (a standalone
    ``hdpo-tune merge RUN`` works for a job that did not ask for the merge stage)."""
    spec = run.spec
    return spec.merge or MergeSpec(), spec.export or ExportSpec(), spec.hub or HubSpec()


def _open(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.from_folder(run)


def _final_dir(run_dir: Path) -> Path:
    final = run_dir / layout.FINAL
    if not os.path.lexists(final):
        raise InputError(f"{final} not found: the training stage has not finished (no final model/adapter)")
    problem = artifact.verify(final)
    if problem:
        raise InputError(f"{final} is not whole ({problem}): rerun the job (`hdpo-tune run JOB`) to rebuild it "
                         "from the last checkpoint")
    return final


def whole(folder: Path, run_dir: Path, command: str) -> None:
    """Refuse (one line naming what is wrong and the command that rebuilds it) an artifact that does not verify
    against its manifest: a push never uploads a folder a killed or damaged build left behind."""
    problem = artifact.verify(folder)
    if problem:
        raise InputError(f"{folder} is not whole ({problem}): rerun `hdpo-tune {command} {run_dir}` before pushing")


def export_folders(export_spec: ExportSpec) -> tuple[str, ...]:
    """The folders an export writes: ``onnx`` unless only GGUF is enabled, ``gguf`` when enabled."""
    onnx = export_spec.onnx.enabled or not export_spec.gguf.enabled
    return ((layout.ONNX,) if onnx else ()) + ((layout.GGUF,) if export_spec.gguf.enabled else ())


def merge_run(run_dir: Run | str | Path, force: bool = False, log: Log = print) -> dict[str, Any]:
    """``hdpo-tune merge RUN_DIR``: :func:`merge` on the run folder."""
    return merge(_open(run_dir), force=force, log=log)


def merge(run: Run, force: bool = False, log: Log = print) -> dict[str, Any]:
    """Merge ``final/`` into ``merged/`` (LoRA) or copy it (full FT); (re)write README.md and provenance.json.

    A second call with unchanged inputs (and a ``merged/`` that verifies against its manifest) does not touch the
    weights and says so; ``force`` redoes it. The card and provenance are republished with the folder (hard
    links for the unchanged files) only when their text changed.
    """
    from hdpo_core.export import merge as m
    from hdpo_core.export.modelcard import build_card, load_json, provenance

    run_dir, spec = run.path, run.resolved()
    merge_spec, export_spec, hub_spec = _sections(run)
    final, out = _final_dir(run_dir), run_dir / layout.MERGED
    lora = m.is_adapter(final)
    base = (m.base_model_of(final) or run.spec.model.name_or_path) if lora else None
    dtype = merge_spec.dtype or m.default_dtype(base if lora else str(final))
    existing = None if force else m.up_to_date(out, m.fingerprint(final, dtype))

    def card_files(result: m.MergeResult | dict[str, Any]) -> dict[str, bytes]:
        """README.md and provenance.json for the merged folder (the same text when nothing changed)."""
        recorded = {k: v for k, v in (result if isinstance(result, dict) else asdict(result)).items()
                    if k != "skipped"}
        shared, recorded = public_paths(spec, run_dir), public_paths(recorded, run_dir)  # no machine paths
        card = build_card(shared, base_model=_card_base(run, base), eval_results=load_json(run_dir / layout.EVAL /
                          layout.EVAL_RESULTS), repo_id=hub_spec.repo_id, onnx=export_spec.onnx.enabled)
        # the train stage's data files and fingerprints
        extra = {"data": public_paths(load_json(run_dir / layout.DATA_INFO), run_dir)}
        prov = provenance(shared, run_dir=run_dir, merge_info=recorded, extra=extra)
        return {"README.md": card.encode("utf-8"),
                "provenance.json": (json.dumps(prov, indent=2, default=str) + "\n").encode()}

    if existing:
        log(
            f"merge: {out} is already up to date (same inputs, dtype {dtype}); nothing to do (use --force to redo)"
        )
        artifact.replace_files(out, card_files(existing))  # a new eval result changes the card: republished
        return {**existing, "skipped": True}
    quant = quant_options(run.spec.quantization, run.spec.model.dtype, _merge_device())
    if lora and quant is not None:
        from hdpo_core.export.merge_qlora import merge_qlora

        result = merge_qlora(final, out, base_id=base, dtype=dtype, tolerance=merge_spec.tolerance, quant=quant,
                             extra=card_files)
    elif lora:
        result = m.merge_lora(final, out, base_id=base, dtype=dtype, tolerance=merge_spec.tolerance, extra=card_files)
    else:
        result = m.copy_full(final, out, dtype=dtype, extra=card_files)
    info = result.__dict__.copy()
    what = f"merged LoRA into {base}, max abs logit diff {result.max_abs_logit_diff:.3g}" if lora else "copied full model"
    log(f"merge: {what + _qlora_note(info)}; saved {dtype} to {out}")
    return info


def _merge_device() -> str:
    """bitsandbytes runs a k-bit base where it was placed: the GPU when there is one (as training did)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _qlora_note(info: dict[str, Any]) -> str:
    if not info.get("base_quantization"):
        return ""
    return (f" (dequantized {info['base_quantization']} base + adapter vs the k-bit model: "
            f"{info['greedy_identical']}/{info['greedy_tokens']} greedy tokens identical)")


def _card_base(run: Run, base: str | None) -> str | None:
    """The base model the card names: the spec's model, or, for a run started from an SFT adapter (merged
    into RUN/start_model), that adapter's own base."""
    from hdpo_core.export import merge as m

    named = run.spec.model.name_or_path
    if m.is_bare_adapter(Path(named)):  # the adapter's own config names its base (merge.json only by name)
        return m.base_model_of(Path(named)) or named
    return base or named


def export_run(run_dir: Run | str | Path, force: bool = False, log: Log = print) -> dict[str, Any]:
    """``hdpo-tune export RUN_DIR``: :func:`export` on the run folder."""
    return export(_open(run_dir), force=force, log=log)


def export(run: Run, force: bool = False, log: Log = print) -> dict[str, Any]:
    """Export ``merged/`` to ``onnx/`` (and ``gguf/`` when enabled) and validate against PyTorch (always;
    failure raises RunError).

    Merges first if needed (a no-op when merged/ is current). Writes ``onnx/validation.json`` either way.
    ONNX is exported unless only GGUF is enabled. Returns the ONNX report (with ``gguf`` when exported).
    Each folder is built aside with its report and renamed into place (:mod:`hdpo_core.artifact`); one that
    failed validation is kept whole with its report (``passed: false``) and never pushed.
    """
    run_dir, raw, export_spec = run.path, run.resolved(), _sections(run)[1]
    merge_info = merge(run, log=lambda msg: None)  # quiet when merged/ is already current
    report: dict[str, Any] = {}
    if layout.ONNX in export_folders(export_spec):
        report = _export_onnx(run_dir, raw, export_spec, merge_info, force=force, log=log)
    if export_spec.gguf.enabled:
        report["gguf"] = _export_gguf(run_dir, export_spec, merge_info, force=force, log=log)
    return report


def _up_to_date(out: Path, key: str, force: bool) -> dict | None:
    """The report of ``out`` when it is whole (manifest), passed validation and came from ``key``."""
    if force or artifact.verify(out, required=(REPORT,)) is not None:
        return None
    prev = read_json(out / REPORT)
    return prev if isinstance(prev, dict) and prev.get("passed") is True and prev.get("source_key") == key else None


def _start_export(out: Path, merge_info: dict, spec_json: str, *, force: bool, log: Log) -> tuple[str, dict | None]:
    """``(source key, previous report)``: the previous report when ``out`` already holds a whole, validated export
    of the same weights and settings (nothing to do), else ``None`` (the new build replaces ``out`` in one
    rename; the stale one stays whole until then)."""
    key = hashlib.sha256((merge_info["fingerprint"] + spec_json).encode()).hexdigest()
    prev = _up_to_date(out, key, force)
    if prev is not None:
        log(f"export: {out} is already exported and validated from the same weights; nothing to do (use --force)")
    return key, prev


def _export_onnx(run_dir: Path, raw: dict, export_spec: ExportSpec, merge_info: dict, *, force: bool,
                 log: Log) -> dict:
    from hdpo_core.export.genai_config import write_genai_config
    from hdpo_core.export.onnx_export import export_decoder
    from hdpo_core.export.onnx_quantize import quantize_weights
    from hdpo_core.export.onnx_validate import validate_export

    onnx_spec = export_spec.onnx
    merged, out = run_dir / layout.MERGED, run_dir / layout.ONNX
    key, prev = _start_export(out, merge_info, onnx_spec.model_dump_json(), force=force, log=log)
    if prev is not None:
        return prev
    started = time.perf_counter()
    with artifact.building(out, required=(REPORT,)) as tmp:  # a half-written export is never left in place
        config = export_decoder(merged, tmp, opset=onnx_spec.opset)
        bits = {"int8": 8, "int4": 4}.get(onnx_spec.quantize or "")
        quantized = quantize_weights(tmp, bits=bits, block_size=onnx_spec.quantize_block_size) if bits else None
        if quantized:
            config["model_file"] = quantized
            (tmp / "hdpo_onnx.json").write_text(json.dumps(config, indent=2) + "\n")
        if onnx_spec.genai_config:
            write_genai_config(tmp)
        log(f"export: wrote {out} (opset {config['opset']}) in {time.perf_counter() - started:.1f}s; validating")
        floor = onnx_spec.int4_min_top1_agreement if bits == 4 else onnx_spec.int8_min_top1_agreement
        report = validate_export(
            tmp,
            merged,
            atol=onnx_spec.atol,
            decode_steps=onnx_spec.decode_steps,
            greedy_tokens=onnx_spec.greedy_tokens,
            quantized_file=quantized,
            quantized_min_top1_agreement=floor,
            quantized_max_rel_logit_error=onnx_spec.quantized_max_rel_logit_error,
        )
        report.update(source_key=key, opset=config["opset"], versions=_versions())
        quant = None
        if quantized and report["passed"]:
            from service.stages.ship_quant import write_quantization_report

            quant = write_quantization_report(tmp, quantized, raw, onnx_spec.quantized_eval_tasks, report)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")  # the report goes in with the export
    if not report["passed"]:
        raise RunError(report["failures"][0] + f" (report: {out / REPORT})")
    log(
        f"export: validation passed, max abs logit diff {report['max_abs_logit_diff']:.3g} <= {onnx_spec.atol:g}, "
        f"{onnx_spec.greedy_tokens} greedy tokens identical"
    )
    if quant:
        acc = quant.get("greedy_accuracy")
        log(
            f"export: {onnx_spec.quantize} {quant['size_bytes']['ratio']:.0%} of float32 size, "
            f"top-1 agreement {report['quantized']['top1_agreement']:.1%}"
            + (f", greedy accuracy {acc['float32']:.1%} -> {acc['quantized']:.1%}" if acc else "")
            + f" ({out / layout.QUANT_REPORT})"
        )
    return report


def _export_gguf(run_dir: Path, export_spec: ExportSpec, merge_info: dict, *, force: bool, log: Log) -> dict:
    from hdpo_core.export.gguf_export import export_gguf

    spec = export_spec.gguf
    out = run_dir / layout.GGUF
    key, prev = _start_export(out, merge_info, spec.model_dump_json(), force=force, log=log)
    if prev is not None:
        return prev
    with artifact.building(out, required=(REPORT,)) as tmp:
        report = export_gguf(
            run_dir / layout.MERGED,
            tmp,
            types=list(spec.types),
            name=run_dir.resolve().name,
            modelfile=spec.modelfile,
            max_rel_logit_error={"f16": spec.f16_max_rel_logit_error, "q8_0": spec.q8_0_max_rel_logit_error},
            min_top1_agreement=spec.min_top1_agreement,
        )
        report.update(source_key=key, versions=_versions())
        (tmp / REPORT).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not report["passed"]:
        raise RunError(report["failures"][0] + f" (report: {out / REPORT})")
    sizes = ", ".join(f"model.{t}.gguf {r['size_bytes'] / 1e6:.1f} MB" for t, r in report["files"].items())
    log(f"export: wrote {out}: {sizes}; transformers' GGUF loader agrees with the merged model")
    return report


def _validated(folder: Path, run_dir: Path) -> bool:
    """Whether ``folder`` (``onnx/`` or ``gguf/``) holds an export to push: False when absent (a leftover of a
    killed build, ``onnx.tmp``, is not an export); an export that is not whole or has not passed validation is
    refused rather than uploaded or silently left out."""
    if not os.path.lexists(folder):
        return False
    whole(folder, run_dir, "export")
    marker = folder / REPORT
    report = read_json(marker)
    passed = isinstance(report, dict) and report.get("passed") is True
    if not passed:
        raise InputError(f"{folder} holds an export that has not passed validation (see {marker.name}): rerun "
                         f"`hdpo-tune export {run_dir}` before pushing")
    return True


def _versions() -> dict[str, str]:
    from hdpo_core.export.modelcard import package_versions

    return package_versions()


def upload_plan(run_dir: Path, expected: tuple[str, ...] = ()) -> list:
    """What a push uploads: ``merged/`` at the repo root, plus ``onnx/`` and ``gguf/`` when exported and
    validated. ``expected``: the exports the job enables; one of them absent (an export killed after the old
    folder was moved aside) is refused, not silently left out."""
    from hdpo_core.export.hub import Upload

    merged = run_dir / layout.MERGED
    if not os.path.lexists(merged):
        raise InputError(f"{merged} has no model: run `hdpo-tune merge {run_dir}` before pushing")
    whole(merged, run_dir, "merge")
    missing = [sub for sub in expected if not os.path.lexists(run_dir / sub)]
    if missing:
        raise InputError(f"{run_dir / missing[0]} is missing but the job exports it: rerun `hdpo-tune export "
                         f"{run_dir}` before pushing")
    return [Upload(merged, None)] + [Upload(run_dir / sub, sub) for sub in (layout.ONNX, layout.GGUF)
                                     if _validated(run_dir / sub, run_dir)]


def push_run(run_dir: Run | str | Path, dry_run: bool = False, api: Any = None, log: Log = print,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """``hdpo-tune push RUN_DIR``: :func:`push` on the run folder."""
    return push(_open(run_dir), dry_run=dry_run, api=api, log=log, sleep=sleep)


def push(
    run: Run,
    dry_run: bool = False,
    api: Any = None,
    log: Log = print,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Push ``merged/`` (+ ``onnx/``) to ``hub.repo_id``; ``dry_run`` only lists the files. Token: HF_TOKEN."""
    from hdpo_core.export.hub import hf_token
    from hdpo_core.export.hub import push as push_uploads

    run_dir = run.path
    hub = _sections(run)[2]
    if hub.repo_id is None:
        raise InputError(f"{run_dir / layout.RESOLVED_SPEC}: hub.repo_id is not set; set it to 'owner/name' to push")
    export_spec = run.spec.export
    expected = export_folders(export_spec) if export_spec and (export_spec.onnx.enabled or export_spec.gguf.enabled) else ()
    plan = upload_plan(run_dir, expected)
    message = hub.commit_message or f"hdpo-tune: upload run {run_dir.resolve().name}"
    if dry_run:
        where = f"{hub.repo_id}@{hub.revision or 'main'}{' (as a PR)' if hub.create_pr else ''}"
        log(f"dry run: would push to {where}, {'private' if hub.private else 'public'}, message {message!r}:")
        for up in plan:
            for f in sorted(p for p in up.folder.rglob("*") if p.is_file()):
                rel = f.relative_to(up.folder).as_posix()
                log(f"  {up.path_in_repo + '/' if up.path_in_repo else ''}{rel}  ({f.stat().st_size} bytes)")
        log(f"  HF_TOKEN is {'set' if os.environ.get('HF_TOKEN') else 'NOT set (required for a real push)'}")
        return {"repo_id": hub.repo_id, "dry_run": True}
    token = hf_token()
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    results = push_uploads(
        api,
        repo_id=hub.repo_id,
        private=hub.private,
        uploads=plan,
        commit_message=message,
        revision=hub.revision,
        create_pr=hub.create_pr,
        sleep=sleep,
        log=log,
    )
    log(f"push: uploaded {', '.join(u.path_in_repo or 'merged model' for u in plan)} to {hub.repo_id}")
    prs = [r.pr_revision for r in results if getattr(r, "pr_revision", None)]
    return {
        "repo_id": hub.repo_id,
        "revision": hub.revision,
        "pr_revision": prs[0] if prs else None,
        "uploaded": [u.path_in_repo or "." for u in plan],
        "dry_run": False,
    }


def generate_onnx(
    onnx_dir: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> str:
    """Generate with onnxruntime only (no torch import on this path)."""
    from hdpo_core.export.ort_generate import CONFIG_NAME, generate_text

    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / CONFIG_NAME).exists():
        raise InputError(
            f"{onnx_dir}/{CONFIG_NAME} not found: --onnx must be an folder written by `hdpo-tune export`"
        )
    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise InputError("--temperature must be >= 0, --top-p in (0, 1], --max-new-tokens >= 1")
    text, _ = generate_text(
        onnx_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    return text

"""Fold a LoRA adapter into its base model (float32, safe merge), check it, save a servable folder.

Why float32: DPO/H-DPO deltas are small and merging into bf16 measurably moves the loss (peft#1388), so the
base is reloaded unquantized in float32, merged with ``merge_and_unload(safe_merge=True)`` (which refuses
NaN), checked against base+adapter logits, and only then cast to the serving dtype.
The output folder carries ``merge.json`` with a fingerprint of the inputs: a rerun with the same inputs and
dtype is a no-op, as long as the folder still verifies against its manifest (it is built aside and renamed
into place by :mod:`hdpo_core.artifact`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hdpo_core import artifact
from hdpo_core.errors import InputError, RunError
from hdpo_core.io import read_json
from hdpo_core.layout import MERGE_INFO as MARKER
from hdpo_core.public_paths import public_path

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase
SAMPLE_TEXTS = (
    "Question: what is the capital of France? Answer:",
    "Write a short poem about the sea.",
    "def fibonacci(n):",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class MergeResult:
    """What the merge did. ``skipped`` = the folder was already up to date (nothing written)."""

    kind: str  # "lora" | "full"
    skipped: bool
    dtype: str
    max_abs_logit_diff: float | None
    tolerance: float | None
    fingerprint: str
    base_model: str | None


def is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").exists()


def is_bare_adapter(folder: Path) -> bool:
    """A peft adapter folder without a model of its own (no config.json): e.g. an SFT LoRA to start from."""
    return folder.is_dir() and is_adapter(folder) and not (folder / "config.json").exists()


def fingerprint(folder: Path, dtype: str) -> str:
    """sha256 over file names + contents of ``folder`` (weights and configs) and the target dtype."""
    h = hashlib.sha256(dtype.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def up_to_date(out_dir: Path, fp: str) -> dict[str, Any] | None:
    """The existing ``merge.json`` if ``out_dir`` is whole (its manifest verifies) and was produced from the
    same inputs, else None (a torn or missing ``merge.json`` included: that folder is rebuilt)."""
    if artifact.verify(out_dir, required=(MARKER, "config.json")) is not None:
        return None
    info = read_json(out_dir / MARKER)
    return info if isinstance(info, dict) and info.get("fingerprint") == fp else None


def base_model_of(adapter_dir: Path) -> str | None:
    """``base_model_name_or_path`` from the adapter config (None when peft recorded none)."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(cfg["base_model_name_or_path"]) if cfg.get("base_model_name_or_path") else None


def default_dtype(model_dir_or_id: str) -> str:
    """The base model's own dtype when it is a float type, else float32."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(model_dir_or_id), "dtype", None)
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return name if name in DTYPES else "float32"


def _set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """transformers 5 keeps eos/pad only in generation_config: set them so generate() stops and pads."""
    gen = model.generation_config
    if gen.eos_token_id is None:
        gen.eos_token_id = (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
        )
    if gen.pad_token_id is None:
        pad = tokenizer.pad_token_id
        gen.pad_token_id = (
            pad if pad is not None else (gen.eos_token_id if isinstance(gen.eos_token_id, int) else None)
        )


def _logits(model: torch.nn.Module, batch: BatchEncoding) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(**batch).logits
    return logits.float()


#: Files the caller adds to the merged folder (model card, provenance) from the merge's result, so they are
#: published with the weights in one rename.
ExtraFiles = Callable[[MergeResult], dict[str, bytes]]


def _write_extra(tmp: Path, result: MergeResult, extra: ExtraFiles | None) -> None:
    for name, data in (extra(result) if extra else {}).items():
        (tmp / name).write_bytes(data)


def merge_lora(
    adapter_dir: Path, out_dir: Path, *, base_id: str, dtype: str, tolerance: float, extra: ExtraFiles | None = None
) -> MergeResult:
    """Merge ``adapter_dir`` into ``base_id`` (folder or Hub id); build ``out_dir`` aside (``.tmp``) with ``extra``
    files and rename it into place."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hdpo_core.model import has_tokenizer_files

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer_files(adapter_dir) else base_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(base_id, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    batch = tokenizer(list(SAMPLE_TEXTS), return_tensors="pt", padding=True)
    ref = _logits(model, batch)
    try:
        merged = model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft raises ValueError when the merged weights contain NaN
        raise RunError(f"LoRA merge of {adapter_dir} refused: {exc}; the adapter weights are broken") from exc
    got = _logits(merged, batch)
    valid = batch["attention_mask"].bool()
    diff = float((got - ref).abs()[valid].max())
    if not diff <= tolerance:
        raise RunError(
            f"merged model differs from base+adapter: max abs logit diff {diff:.3g} > merge.tolerance {tolerance:g}"
        )
    _set_generation_ids(merged, tokenizer)
    tokenizer.padding_side = "right"
    result = MergeResult("lora", False, dtype, diff, tolerance, fingerprint(adapter_dir, dtype),
                         public_path(base_id, out_dir.parent))
    with artifact.building(out_dir, required=(MARKER, "config.json")) as tmp:
        merged.to(DTYPES[dtype]).save_pretrained(tmp, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(asdict(result), indent=2) + "\n")
        _write_extra(tmp, result, extra)
    return result


def copy_full(final_dir: Path, out_dir: Path, *, dtype: str, extra: ExtraFiles | None = None) -> MergeResult:
    """Full fine-tuning: nothing to merge; save the same layout (cast to ``dtype``, eos/pad set)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (final_dir / "config.json").exists():
        raise InputError(f"{final_dir} holds neither adapter_config.json (LoRA) nor config.json (full model)")
    tokenizer = AutoTokenizer.from_pretrained(final_dir)
    model = AutoModelForCausalLM.from_pretrained(final_dir, dtype=DTYPES[dtype])
    _set_generation_ids(model, tokenizer)
    result = MergeResult("full", False, dtype, None, None, fingerprint(final_dir, dtype), None)
    with artifact.building(out_dir, required=(MARKER, "config.json")) as tmp:
        model.save_pretrained(tmp, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        for name in ("chat_template.jinja",):
            if (final_dir / name).exists() and not (tmp / name).exists():
                shutil.copy2(final_dir / name, tmp / name)
        (tmp / MARKER).write_text(json.dumps(asdict(result), indent=2) + "\n")
        _write_extra(tmp, result, extra)
    return result

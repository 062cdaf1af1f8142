"""Find and load what ``hdpo-tune eval`` evaluates: a model folder (base, peft adapter, merged), an ONNX
export folder, or a run folder (``RUN/final`` or ``RUN/merged`` + ``RUN/job.resolved.yaml``).

The core only recognises a run folder by its files; reading the run's job spec is the service's job."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from hdpo_core.errors import InputError
from hdpo_core.inputs import CONFIG_BYTES, check_model_folder, read_json
from hdpo_core.layout import FINAL, MERGED, ONNX, RESOLVED_SPEC
from hdpo_core.model import has_tokenizer_files

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .sampling import Samples

Kind = Literal["hf", "peft", "onnx"]


@dataclass(frozen=True)
class ResolvedTarget:
    """Where the model lives and, for a run folder, the run folder."""

    model_dir: Path
    kind: Kind
    run_dir: Path | None = None


def _kind(folder: Path) -> Kind | None:
    if (folder / "adapter_config.json").is_file():
        return "peft"
    if any(folder.glob("*.onnx")) or (folder / "genai_config.json").is_file():
        return "onnx"
    if (folder / "config.json").is_file():
        return "hf"
    return None


def resolve_target(path: str | Path) -> ResolvedTarget:
    """Classify ``path``; raises :class:`InputError` naming what was expected."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{p}: eval target not found; pass a model folder, an adapter folder, an ONNX export "
                         "folder or a run folder")
    spec = p / RESOLVED_SPEC
    if spec.is_file():
        for sub in (FINAL, MERGED):
            kind = _kind(p / sub)
            if kind is not None:
                return ResolvedTarget(p / sub, kind, run_dir=p)
        raise InputError(f"{p}: run folder has no final/ or merged/ model; train first (hdpo-tune run) or pass "
                         "a model folder")
    kind = _kind(p)
    if kind is None and (p / ONNX).is_dir():
        kind, p = "onnx", p / ONNX
    if kind is None:
        raise InputError(f"{p}: not a model folder (no config.json, adapter_config.json or *.onnx) and not a "
                         "run folder (no job.resolved.yaml)")
    return ResolvedTarget(p, kind)


def _load_tokenizer(folder: Path, fallback: Path | None) -> PreTrainedTokenizerBase:
    import transformers

    for f in (folder, fallback):
        if f is not None and has_tokenizer_files(f):
            tok = transformers.AutoTokenizer.from_pretrained(str(f))
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            return tok
    raise InputError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json) here or in the "
                     "base model folder; save the tokenizer next to the model")


def load_causal_lm(folder: Path, kind: Kind, *, device: str = "cpu", dtype: torch.dtype | None = None
                   ) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` in eval mode. A peft adapter is loaded on its base
    (``base_model_name_or_path`` in adapter_config.json) and kept unmerged, so its reference is the same
    model with the adapter disabled."""
    import transformers

    if kind == "onnx":
        raise InputError(f"{folder}: an ONNX export has no torch model; use the ONNX generator backend")
    check_model_folder(folder)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    base_dir: Path | None = None
    model: PreTrainedModel | PeftModel
    try:
        if kind == "peft":
            import peft

            config = read_json(folder / "adapter_config.json", "adapter config", max_bytes=CONFIG_BYTES)
            base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
            if not base:
                raise InputError(f"{folder}/adapter_config.json: no base_model_name_or_path; cannot load the base")
            base_dir = Path(base) if Path(base).is_dir() else None
            from hdpo_core.quant import saved_load_kwargs  # QLoRA: the adapter goes on its k-bit base

            model = transformers.AutoModelForCausalLM.from_pretrained(base, **kwargs,
                                                                      **saved_load_kwargs(folder, device))
            model = peft.PeftModel.from_pretrained(model, str(folder))
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: cannot load the model ({type(exc).__name__}: {str(exc)[:200]})") from None
    tokenizer = _load_tokenizer(folder, base_dir)
    # transformers declares PreTrainedModel.to with functools.wraps(nn.Module.to), which mypy reads unbound
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]


class Sampler(Protocol):
    """A sampling backend other than the torch model's own (:func:`hdpo_core.eval.sampling.sample_batched`
    arguments, the same :class:`Samples` back): the ONNX generator, or a test's scripted one."""

    def sample(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float, top_p: float | None,
               max_new_tokens: int, seed: int, eos_token_id: int, pad_token_id: int, max_batch_size: int
               ) -> Samples: ...


@dataclass
class EvalSide:
    """One model as the evaluation sees it (the policy, or the reference).

    ``active()`` is entered around everything this side computes: for a LoRA policy's reference it disables the
    adapter on the shared model. ``model`` is ``None`` for backends without a torch model (ONNX), which then
    skip the teacher-forced metrics. ``sampler`` is ``None`` for the torch sampler, or an ONNX generator.
    """

    name: str
    model: torch.nn.Module | None
    active: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    sampler: Sampler | None = None


def peft_reference(model: PeftModel) -> EvalSide:
    """The reference of a LoRA policy: the same model with the adapter switched off."""

    @contextlib.contextmanager
    def disabled() -> Iterator[None]:
        with model.disable_adapter():
            yield

    return EvalSide("reference", model, disabled)


class OnnxSampler:
    """Sampling backend over an ONNX export (:class:`hdpo_core.export.ort_generate.OrtDecoder`, onnxruntime only).

    Rows are repeated ``n`` times and generated in chunks of ``max_batch_size``; chunk ``i`` uses numpy seed
    ``seed + i``. The ORT loop does not expose its logits, so ``entropy_sum`` is NaN (reported as n/a): the
    entropy of an export equals that of the merged model it was exported from (the export is parity-checked).
    """

    def __init__(self, folder: Path) -> None:
        import transformers

        from hdpo_core.export.ort_generate import OrtDecoder

        self.decoder = OrtDecoder(folder)
        cfg = self.decoder.config
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        tok.pad_token = tok.convert_ids_to_tokens(cfg.pad_token_id)
        tok.eos_token = tok.convert_ids_to_tokens(cfg.eos_token_ids[0])
        self.tokenizer = tok

    def sample(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float, top_p: float | None,
               max_new_tokens: int, seed: int, eos_token_id: int, pad_token_id: int, max_batch_size: int
               ) -> Samples:
        from .sampling import Samples

        eos = set(self.decoder.config.eos_token_ids) | {eos_token_id}
        rows = [list(p) for p in prompts for _ in range(n)]
        tokens: list[list[int]] = []
        finished: list[bool] = []
        for i, start in enumerate(range(0, len(rows), max_batch_size)):
            out = self.decoder.generate(rows[start:start + max_batch_size], max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p or 1.0, seed=seed + i)
            for row in out:
                cut = next((j for j, t in enumerate(row) if t in eos), None)
                tokens.append(row if cut is None else row[:cut])
                finished.append(cut is not None)
        return Samples(tokens, finished, [float("nan")] * len(rows), [0] * len(rows))


def load_onnx_sampler(folder: Path) -> OnnxSampler:
    """The ONNX generator backend; :class:`InputError` when the folder is not a usable export."""
    from hdpo_core.export.ort_generate import CONFIG_NAME

    if not (folder / CONFIG_NAME).is_file() or not (folder / "tokenizer.json").is_file():
        raise InputError(f"{folder}: not an hdpo-tune ONNX export (needs {CONFIG_NAME} and tokenizer.json, "
                         "written by hdpo-tune export); evaluate the merged model folder instead")
    return OnnxSampler(folder)

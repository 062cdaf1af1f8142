"""Load the policy and its reference: the one place where LoRA and full fine-tuning differ.

* LoRA (peft): the reference is the same model with the adapter switched off; no second copy.
* Full fine-tuning: the reference is a frozen copy loaded from the same folder.
* QLoRA (``ModelOptions.quantization``): the base is loaded k-bit (:mod:`hdpo_core.quant`), prepared as peft's
  k-bit training does, and LoRA goes on top; the reference is still the adapter-off model.

Loading is strict by default: ``trust_remote_code`` off, safetensors only (pickle ``.bin`` weights only with
``allow_pickle``), and a Hub id that cannot be reached is one clear :class:`InputError`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import InputError
from .inputs import check_model_folder
from .settings import LoraOptions, ModelOptions

__all__ = ["DTYPES", "LoraOptions", "ModelOptions", "apply_lora", "build_policy_and_reference", "disable_dropout",
           "has_tokenizer_files", "load_causal_lm", "load_tokenizer", "model_fingerprint"]

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds a saved tokenizer (``tokenizer.json`` or ``tokenizer_config.json``)."""
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def _check_local_folder(opts: ModelOptions) -> None:
    path = Path(opts.name_or_path)
    if not path.exists():
        return
    if path.is_dir():
        check_model_folder(path)
    if not (path / "config.json").exists():
        raise InputError(f"model.name_or_path: {path} has no config.json; point it at a Hugging Face model folder")
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safe and has_pickle and not opts.allow_pickle:
        raise InputError(f"model.name_or_path: {path} has only pickle weights (.bin), which can run code when "
                         "loaded; convert them to safetensors or set model.allow_pickle: true if you trust them")
    if not has_safe and not has_pickle:
        raise InputError(f"model.name_or_path: {path} has no weights (*.safetensors)")


def _load_error(opts: ModelOptions, what: str, exc: Exception) -> InputError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if Path(opts.name_or_path).exists():
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        hint = ("; it needs custom code: review it, then set model.trust_remote_code: true"
                if "trust_remote_code" in str(exc) and not opts.trust_remote_code else "")
        return InputError(f"model.name_or_path: cannot load the {what} from {opts.name_or_path} "
                          f"({type(exc).__name__}: {detail}){hint}")
    hint = "the Hub is unreachable (offline mode): download the model and point model.name_or_path at the folder" \
        if offline else "check the model id and your network, or use a local folder"
    return InputError(f"model.name_or_path: '{opts.name_or_path}' is not a local folder and the {what} could not be "
                      f"fetched from the Hub ({type(exc).__name__}); {hint}")


def load_tokenizer(opts: ModelOptions) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    _check_local_folder(opts)
    try:
        tok = AutoTokenizer.from_pretrained(opts.name_or_path, revision=opts.revision,
                                            trust_remote_code=opts.trust_remote_code)
    except Exception as exc:
        raise _load_error(opts, "tokenizer", exc) from None
    return tok


def load_causal_lm(opts: ModelOptions) -> PreTrainedModel:
    """Load a ``*ForCausalLM`` in ``opts.dtype`` (safetensors only unless ``allow_pickle``)."""
    from transformers import AutoModelForCausalLM

    from . import quant

    _check_local_folder(opts)
    extra: dict[str, Any] = {}
    if opts.quantization is not None:
        quant.check_base(opts.name_or_path, trust_remote_code=opts.trust_remote_code)
        extra = quant.load_kwargs(opts.quantization)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            opts.name_or_path, revision=opts.revision, dtype=DTYPES[opts.dtype],
            trust_remote_code=opts.trust_remote_code, use_safetensors=None if opts.allow_pickle else True,
            attn_implementation=opts.attn_implementation, **extra,
        )
    except Exception as exc:
        raise _load_error(opts, "model", exc) from None
    return model


def apply_lora(model: PreTrainedModel, lora: LoraOptions) -> PeftModel:
    """Wrap ``model`` in a peft LoRA model; only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    # peft annotates lora_alpha as int, but it is only ever divided (scaling = lora_alpha / r): a float is valid
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha,  # type: ignore[arg-type]
                        lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise InputError(f"lora.target_modules: {str(exc).splitlines()[0][:200]}; use 'all-linear' or module "
                         "names of this model") from None


def build_policy_and_reference(opts: ModelOptions, lora: LoraOptions | None
                               ) -> tuple[PreTrainedModel | PeftModel, PreTrainedModel | None]:
    """Returns ``(policy, frozen_reference)``; the reference is ``None`` under LoRA (adapter-off instead)."""
    base = load_causal_lm(opts)
    if opts.quantization is not None:
        if lora is None:
            raise InputError("quantization: a quantized base trains only adapters; add a lora: section")
        from .quant import prepare_for_training

        base = prepare_for_training(base, opts.gradient_checkpointing)
        base.config.use_cache = False
        return apply_lora(base, lora), None
    if opts.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
    if lora is not None:
        return apply_lora(base, lora), None
    reference = copy.deepcopy(base).eval()
    reference.requires_grad_(False)
    return base, reference


def disable_dropout(model: nn.Module) -> None:
    """Dropout makes policy and reference disagree at step 0; DPO trainers switch it off (TRL does)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def model_fingerprint(opts: ModelOptions) -> str:
    """Cheap identity of the weights: config plus name, size and head/tail bytes of each weight file
    (a Hub id is identified by id and revision)."""
    path = Path(opts.name_or_path)
    quant = opts.quantization.identity() if opts.quantization is not None else None
    h = hashlib.sha256(json.dumps([opts.name_or_path if not path.exists() else "", opts.revision, opts.dtype]
                                  + ([quant] if quant else [])).encode())
    if path.exists():
        for f in sorted(path.iterdir()):
            if f.suffix in {".safetensors", ".bin", ".json"} and f.is_file():
                h.update(f.name.encode())
                size = f.stat().st_size
                h.update(str(size).encode())
                with f.open("rb") as fh:
                    h.update(fh.read(1 << 20))
                    if size > 1 << 21:
                        fh.seek(-(1 << 20), os.SEEK_END)
                        h.update(fh.read())
    return h.hexdigest()[:16]

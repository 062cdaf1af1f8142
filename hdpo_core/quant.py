"""A k-bit base model under LoRA (QLoRA): load it quantized, prepare it for training, dequantize it to merge.

The backend is bitsandbytes through transformers' ``BitsAndBytesConfig`` and peft's own ``Linear4bit`` /
``Linear8bitLt`` LoRA layers, on CUDA and, with bitsandbytes >= 0.49, on the CPU (its CPU backend): one code
path, tested on the CPU, used on the GPU. The reference stays the same quantized model with the adapter off,
so nothing here makes a second copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import InputError
from .layout import QLORA_SETTINGS as SETTINGS_FILE

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig, PreTrainedModel

EXTRA = "pip install 'hdpo-tune[qlora]'"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class QuantOptions:
    """How the frozen base is stored: ``bits`` 4 (``quant_type`` nf4/fp4, ``double_quant``) or 8 (LLM.int8);
    matmuls run in ``compute_dtype``. ``device`` is where the quantized weights are placed at load time
    (bitsandbytes quantizes while placing, so this is the training device)."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    device: str = "cpu"

    def identity(self) -> str:
        """What changes the numbers (not the device): part of the model fingerprint of the reference cache."""
        if self.bits == 8:
            return f"bnb8:{self.compute_dtype}"
        return f"bnb{self.bits}:{self.quant_type}:{int(self.double_quant)}:{self.compute_dtype}"


def require_backend() -> None:
    """One line naming the extra when bitsandbytes is missing (before any loading)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise InputError(f"quantization: needs bitsandbytes, which is not installed; {EXTRA}") from None


def existing_quantization(model_dir: Path) -> str | None:
    """The ``quantization_config.quant_method`` of a local model folder that is already quantized, else None."""
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        return None
    try:
        qc = json.loads(cfg.read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, ValueError):
        return None
    if not qc:
        return None
    return str(qc.get("quant_method", "unknown")) if isinstance(qc, dict) else "unknown"


def bnb_config(q: QuantOptions) -> BitsAndBytesConfig:
    """transformers' ``BitsAndBytesConfig`` for ``q`` (the same object TRL/axolotl users pass)."""
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=_DTYPES[q.compute_dtype])


def load_kwargs(q: QuantOptions) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments that load the base quantized on ``q.device``."""
    require_backend()
    return {"quantization_config": bnb_config(q), "device_map": {"": q.device}}


def prepare_for_training(model: PreTrainedModel, gradient_checkpointing: bool) -> PreTrainedModel:
    """peft's k-bit preparation: every weight frozen, norms/embeddings/head upcast to float32 (the practice for
    stability), input grads enabled so gradient checkpointing reaches the adapters."""
    from peft import prepare_model_for_kbit_training

    prepared: PreTrainedModel = prepare_model_for_kbit_training(  # the same model, prepared in place
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False})
    return prepared


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def dequantize(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """The quantized model with every k-bit layer replaced by a plain ``nn.Linear`` holding the dequantized
    weights (transformers' ``dequantize``), in ``dtype``: the base a merged model is built from."""
    out: PreTrainedModel = model.dequantize(dtype=_DTYPES[dtype])
    # in place (nn.Module.to returns the module itself); transformers declares PreTrainedModel.to with
    # functools.wraps(nn.Module.to), which mypy reads as an unbound function
    out.to(_DTYPES[dtype])  # type: ignore[arg-type]
    return out


def check_base(name_or_path: str, *, trust_remote_code: bool = False) -> None:
    """Everything that can be refused before loading, one line each: the backend is installed, the base is not
    already quantized another way, and it has linear layers bitsandbytes can replace (checked on the meta
    device: no weights are read)."""
    require_backend()
    folder = Path(name_or_path)
    method = existing_quantization(folder)
    if method is not None:
        raise InputError(f"quantization: {folder} is already quantized ({method} in config.json "
                         "quantization_config); point model.name_or_path at the unquantized model, or remove "
                         "quantization:")
    if folder.is_dir() and (folder / "config.json").is_file():
        n = quantizable_layers(str(folder), trust_remote_code=trust_remote_code)
        if n == 0:
            raise InputError(f"quantization: {folder} has no linear layers bitsandbytes can quantize (nn.Linear / "
                             "Conv1D outside the output head); train it without quantization:")


def quantizable_layers(model_dir: str, *, trust_remote_code: bool = False) -> int:
    """How many linear layers (outside the output head) the model built from ``model_dir/config.json`` has."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    return sum(1 for m in model.modules() if isinstance(m, nn.Linear | Conv1D) and m is not head)


def write_settings(model: nn.Module, folder: Path) -> None:
    """Next to a QLoRA adapter: the base's ``BitsAndBytesConfig``, so whoever loads the adapter (``hdpo-tune
    eval``) puts it on the same k-bit base it was trained on. Nothing for an adapter on a float base."""
    from .forward import unwrap_causal_lm

    base = unwrap_causal_lm(model)
    qc = getattr(getattr(base, "config", None), "quantization_config", None)
    if qc is None:
        return
    data = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
    (folder / SETTINGS_FILE).write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def saved_load_kwargs(folder: Path, device: str) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the base of the adapter in ``folder`` as it was trained ({} when
    the adapter was trained on a float base)."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    require_backend()
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    return {"quantization_config": config, "device_map": {"": device}}

"""Export a merged causal LM to ONNX: one decoder graph with KV cache, prefill and decode alike.

Path: ``torch.onnx.export(dynamo=True)`` on a small wrapper that takes the past key/values as flat tensors
and builds a transformers ``DynamicCache`` inside (measured with transformers 5.24 + torch 2.13; optimum does
not support transformers 5, and ``transformers.exporters`` is experimental and splits prefill/decode into two
graphs). The exported dims are symbolic (batch, seq, past, total), traced with sizes >= 2; onnxruntime then
runs the same graph with past length 0 (prefill) and seq length 1 (decode), which validation checks.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hdpo_core.compat import cache_kwarg
from hdpo_core.errors import RunError
from hdpo_core.export.ort_generate import CONFIG_NAME

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
META_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class CacheGeometry:
    """Shape of one layer's cache tensor ``[B, num_kv_heads, T, head_dim]``."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> CacheGeometry:
        text = config.get_text_config(decoder=True)
        heads = text.num_attention_heads
        kv = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(num_layers=text.num_hidden_layers, num_kv_heads=kv, head_dim=head_dim)

    def names(self, prefix: str) -> list[str]:
        return [f"{prefix}.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]


class FlatCacheDecoder(nn.Module):
    """``(input_ids, attention_mask, position_ids, *past) -> (logits, *present)`` with flat cache tensors.

    ``past`` holds ``2 * num_layers`` tensors ``[B, kv_heads, P, head_dim]`` (key, value per layer); they are
    loaded into a ``DynamicCache`` so the model's own cache code runs, and the grown cache is returned flat.
    """

    def __init__(self, model: PreTrainedModel, geometry: CacheGeometry) -> None:
        super().__init__()
        self.model = model
        self.geometry = geometry
        self.cache_kw = cache_kwarg(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.geometry.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_kw: cache},
        )
        flat = []
        for layer in getattr(out, self.cache_kw).layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def _example_inputs(geometry: CacheGeometry, vocab: int) -> tuple[torch.Tensor, ...]:
    """Trace inputs with every dynamic dim >= 2 (torch.export specializes sizes 0 and 1)."""
    batch, seq, past = 2, 3, 4
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    cache = [
        torch.zeros(batch, geometry.num_kv_heads, past, geometry.head_dim)
        for _ in range(2 * geometry.num_layers)
    ]
    return (ids, mask, pos, *cache)


def export_decoder(model_dir: Path, out_dir: Path, *, opset: int | None = None) -> dict[str, Any]:
    """Export ``model_dir`` (a merged HF folder) to ``out_dir/model.onnx`` (+ ``model.onnx.data``), float32.

    Also copies tokenizer/config files and writes ``hdpo_onnx.json``; returns that config dict.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    geometry = CacheGeometry.of(model.config)
    out_dir.mkdir(parents=True, exist_ok=True)
    _trace(FlatCacheDecoder(model, geometry).eval(), geometry, model.config.get_text_config().vocab_size,
           out_dir / "model.onnx", model_dir=model_dir, opset=opset)
    for name in (*TOKENIZER_FILES, *META_FILES):
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, out_dir / name)
    if not (out_dir / "tokenizer.json").exists():
        tokenizer.save_pretrained(out_dir)
    config = _runtime_config(model, tokenizer, geometry, out_dir / "model.onnx")
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return config


def _trace(wrapper: FlatCacheDecoder, geometry: CacheGeometry, vocab: int, path: Path, *, model_dir: Path,
           opset: int | None) -> None:
    """``torch.onnx.export`` (dynamo) of the flat-cache decoder with symbolic batch/seq/past/total dims."""
    import logging
    import warnings

    from torch.export import Dim

    b, s, p, t = Dim("batch"), Dim("seq"), Dim("past"), Dim("total")
    shapes = (
        {0: b, 1: s},
        {0: b, 1: t},
        {0: b, 1: s},
        tuple({0: b, 2: p} for _ in range(2 * geometry.num_layers)),
    )
    # the exporter logs one warning per absent torchvision op and per dynamic-shape rename: noise for users
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                _example_inputs(geometry, vocab),
                f=str(path),
                input_names=_input_names(geometry),
                output_names=_output_names(geometry),
                dynamic_shapes=shapes,
                opset_version=opset,
                dynamo=True,
                external_data=True,
                optimize=True,
                verbose=False,
            )
    except OSError:  # writing model.onnx failed (disk full, ...): the stage names the file and what to do
        raise
    except Exception as exc:  # torch.export errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(
            f"ONNX export of {model_dir} failed: {first} (rerun with --debug for the trace)"
        ) from exc


def _input_names(geometry: CacheGeometry) -> list[str]:
    return ["input_ids", "attention_mask", "position_ids", *geometry.names("past_key_values")]


def _output_names(geometry: CacheGeometry) -> list[str]:
    return ["logits", *geometry.names("present")]


def _runtime_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, geometry: CacheGeometry,
                    onnx_path: Path) -> dict[str, Any]:
    """``hdpo_onnx.json``: what the torch-free runtime needs (names, cache geometry, EOS/pad ids, opset)."""
    import onnx

    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = (
        gen.pad_token_id if gen.pad_token_id is not None else (tokenizer.pad_token_id or (eos_ids or [0])[0])
    )
    return {
        "format": "hdpo-tune onnx decoder v1",
        "model_file": "model.onnx",
        "fp32_model_file": "model.onnx",
        "opset": onnx.load(str(onnx_path), load_external_data=False).opset_import[0].version,
        "input_names": _input_names(geometry),
        "output_names": _output_names(geometry),
        "num_layers": geometry.num_layers,
        "num_kv_heads": geometry.num_kv_heads,
        "head_dim": geometry.head_dim,
        "vocab_size": model.config.get_text_config().vocab_size,
        "eos_token_ids": eos_ids,
        "pad_token_id": int(pad),
        "add_special_tokens": True,
        "dtype": "float32",
        "how_to_run": (
            "Left-pad the batch. Prefill: past_key_values.* = zeros [B, kv_heads, 0, head_dim], attention_mask covers "
            "the prompt, position_ids = max(cumsum(mask)-1, 0). Decode: feed present.* back as past_key_values.*, "
            "append 1 to attention_mask, position_ids = sum(mask)-1. See hdpo_core/export/ort_generate.py."
        ),
    }

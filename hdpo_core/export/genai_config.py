"""``genai_config.json`` for the exported decoder, so onnxruntime-genai serves ``RUN/onnx/`` as it is.

onnxruntime-genai runs any decoder graph whose inputs and outputs it is told: our graph already has the
layout its own model builder writes (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.%d.key|value`` in, ``logits`` and ``present.%d.key|value`` out, past length 0 at prefill).
Two settings matter beyond the names: ``past_present_share_buffer`` must be false (our graph returns a new,
longer ``present`` each step instead of writing into a preallocated buffer), and ``type`` must be a family
onnxruntime-genai knows as a plain decoder, else it refuses the folder.

No field here (nor in ``tokenizer_config.json``) makes genai's ``Tokenizer.encode`` add the BOS a Llama-3
tokenizer's post-processor adds: onnxruntime-genai 0.18 creates its tokenizer with ``add_special_tokens``
off. Callers encoding plain text turn it on (``update_options(add_special_tokens="true")``, docs/export.md);
onnxruntime-extensions then reads the BOS from ``tokenizer.json``'s post-processor, as transformers does.

We keep our exporter rather than onnxruntime-genai's model builder: the builder's graph gave wrong text for
the demo model (fp32 and int4), while this one is checked against PyTorch on every export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENAI_CONFIG = "genai_config.json"
# model_type (config.json) -> onnxruntime-genai decoder type; these are in its list of plain decoders
GENAI_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2"}


def genai_config(hdpo_config: dict[str, Any], hf_config: dict[str, Any], generation: dict[str, Any], *,
                 model_file: str) -> dict[str, Any]:
    """The ``genai_config.json`` dict for ``model_file`` from our ``hdpo_onnx.json`` and the HF configs.

    ``search`` is greedy by default (``do_sample`` false): the serving default that parity is checked for;
    callers override it per request (``GeneratorParams.set_search_options``).
    """
    model_type = hf_config.get("model_type", "")
    text = hf_config.get("text_config") or hf_config
    context = int(
        text.get("max_position_embeddings") or text.get("n_positions") or text.get("n_ctx") or 2048
    )
    eos = hdpo_config["eos_token_ids"]
    heads = int(text.get("num_attention_heads") or text["n_head"])
    return {
        "model": {
            "bos_token_id": text.get("bos_token_id") if text.get("bos_token_id") is not None else eos[0],
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": hdpo_config["head_dim"],
                "hidden_size": int(text.get("hidden_size") or text["n_embd"]),
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": heads,
                "num_hidden_layers": hdpo_config["num_layers"],
                "num_key_value_heads": hdpo_config["num_kv_heads"],
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": hdpo_config["pad_token_id"],
            "type": GENAI_TYPES.get(model_type, model_type),
            "vocab_size": hdpo_config["vocab_size"],
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": int(generation.get("max_length") or context),
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_config(onnx_dir: Path, *, model_file: str | None = None) -> Path:
    """Write ``onnx_dir/genai_config.json`` pointing at ``model_file`` (default: ``hdpo_onnx.json``'s)."""
    from hdpo_core.export.ort_generate import CONFIG_NAME

    hdpo = json.loads((onnx_dir / CONFIG_NAME).read_text())
    hf = json.loads((onnx_dir / "config.json").read_text())
    gen_path = onnx_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    cfg = genai_config(hdpo, hf, gen, model_file=model_file or hdpo["model_file"])
    out = onnx_dir / GENAI_CONFIG
    out.write_text(json.dumps(cfg, indent=2) + "\n")
    return out

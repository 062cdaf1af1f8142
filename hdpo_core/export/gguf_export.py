"""Export a merged Llama / Mistral / Qwen2 model to GGUF (llama.cpp, Ollama) with the ``gguf`` library.

What llama.cpp's own ``convert_hf_to_gguf.py`` does for these families, kept to what they need:

* tensor names from ``gguf``'s own name map (``model.layers.0.self_attn.q_proj.weight`` ->
  ``blk.0.attn_q.weight``);
* Llama and Mistral are written as architecture ``llama``, whose rotary embedding pairs dimensions (i, i+1)
  where Hugging Face pairs (i, i + d/2): q/k rows are permuted per head so both compute the same thing.
  Qwen2 (architecture ``qwen2``) uses the Hugging Face pairing, so nothing is permuted;
* 2-D weights in f16 or q8_0 (rows whose length is not a multiple of 32 stay f16), norms and biases in f32;
  a tied lm_head is not written (llama.cpp reuses ``token_embd``);
* rope: default and linear scaling; other rope types are refused rather than silently changed.

A Mistral is architecture ``llama`` (as llama.cpp's converter writes it), so transformers' GGUF loader reads
it back as ``LlamaForCausalLM``, which computes the same thing. Mistral's sliding window is not written:
llama.cpp's llama architecture attends to the whole context, as for files made by llama.cpp's converter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hdpo_core.errors import InputError
from hdpo_core.export.gguf_tokenizer import read_vocab, write_vocab

if TYPE_CHECKING:
    import gguf

ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
GGUF_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class GgufFile:
    """One written file: its path, type and size."""

    path: Path
    qtype: str
    size_bytes: int


def _text_config(model_dir: Path) -> dict[str, Any]:
    cfg = json.loads((model_dir / "config.json").read_text())
    return {**cfg, **(cfg.get("text_config") or {})}


def check_supported(model_dir: Path) -> str:
    """The config's ``model_type`` if GGUF export handles it, else one InputError line."""
    cfg = _text_config(model_dir)
    kind = cfg.get("model_type")
    if kind not in ARCHS:
        raise InputError(
            f"{model_dir}/config.json: model_type {kind!r} cannot be exported to GGUF here "
            f"(supported: {', '.join(sorted(ARCHS))}); set export.gguf.enabled: false"
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise InputError(
            f"{model_dir}/config.json: rope_type {rope.get('rope_type')!r} is not written to GGUF here "
            "(default and linear only); set export.gguf.enabled: false"
        )
    return str(kind)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face rotate-half layout -> llama.cpp's interleaved pairs, per head (q: heads, k: kv heads)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hparams(writer: gguf.GGUFWriter, cfg: dict[str, Any], kind: str) -> None:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    writer.add_rope_freq_base(float(theta))
    if rope.get("rope_type") == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(cfg["vocab_size"])


def _tensor_data(name: str, w: np.ndarray, qtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    import gguf

    if w.ndim == 1:
        return w.astype(np.float32), None
    if qtype == "q8_0" and w.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        return q, gguf.GGMLQuantizationType.Q8_0
    return w.astype(np.float16), None


def write_gguf(model_dir: Path, out_path: Path, *, qtype: str, name: str) -> GgufFile:
    """Write ``out_path`` from the safetensors in ``model_dir`` (a merged Hugging Face folder)."""
    import gguf
    from safetensors.numpy import load_file

    if qtype not in GGUF_TYPES:
        raise InputError(f"export.gguf.types: {qtype!r} is not one of {list(GGUF_TYPES)}")
    kind = check_supported(model_dir)
    cfg = _text_config(model_dir)
    arch = ARCHS[kind]
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    eos = gen.get("eos_token_id")
    eos_id = (eos[0] if eos else None) if isinstance(eos, list) else eos
    vocab = read_vocab(model_dir, cfg["vocab_size"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer logs file layout at INFO: noise for users
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_name(name)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hparams(writer, cfg, kind)
    write_vocab(writer, vocab, eos_id=eos_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg["num_hidden_layers"])
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    if not tensors:
        raise InputError(f"{model_dir}: no *.safetensors weights to convert")
    tied = "lm_head.weight" not in tensors or cfg.get("tie_word_embeddings")
    for hf_name, w in tensors.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise InputError(f"{model_dir}: tensor {hf_name} has no GGUF name for architecture {arch}")
        w = w.astype(np.float32)
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            w = _permute(w, heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            w = _permute(w, kv)
        data, raw = _tensor_data(target, w, qtype)
        writer.add_tensor(target, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufFile(out_path, qtype, out_path.stat().st_size)


def export_gguf(
    model_dir: Path,
    out_dir: Path,
    *,
    types: list[str],
    name: str,
    modelfile: bool,
    max_rel_logit_error: dict[str, float],
    min_top1_agreement: float,
) -> dict[str, Any]:
    """Write ``out_dir/model.<type>.gguf`` per type (+ ``Modelfile``), check each with transformers' GGUF
    loader, and return the report for ``gguf/validation.json`` (``passed``, ``failures``, per-file numbers)."""
    from hdpo_core.export.gguf_validate import compare_gguf, gguf_failures

    check_supported(model_dir)
    files = [write_gguf(model_dir, out_dir / f"model.{t}.gguf", qtype=t, name=name) for t in types]
    report: dict[str, Any] = {"files": {}, "failures": []}
    for f in files:
        result = compare_gguf(model_dir, f.path)
        result["size_bytes"] = f.size_bytes
        report["files"][f.qtype] = result
        report["failures"] += gguf_failures(
            result, max_rel_logit_error=max_rel_logit_error[f.qtype], min_top1_agreement=min_top1_agreement
        )
    if modelfile:
        report["modelfile"] = write_modelfile(model_dir, out_dir, min(files, key=lambda f: f.size_bytes).path.name)
    report["passed"] = not report["failures"]
    return report


def write_modelfile(model_dir: Path, out_dir: Path, gguf_name: str) -> str:
    """``out_dir/Modelfile`` for ``gguf_name``: the chat template as a Go template, EOS texts as stops."""
    from transformers import AutoTokenizer

    from hdpo_core.export.gguf_tokenizer import adds_bos
    from hdpo_core.export.ollama import chat_pieces, go_template, modelfile

    tok = AutoTokenizer.from_pretrained(model_dir)
    template = None
    if isinstance(tok.chat_template, str):
        pieces = chat_pieces(
            lambda msgs, gen: str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)),
            runtime_prefix=tok.bos_token if adds_bos(tok) else "",
        )
        template = go_template(pieces)
    gen_path = model_dir / "generation_config.json"
    eos = json.loads(gen_path.read_text()).get("eos_token_id") if gen_path.exists() else None
    eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id]
    stops = [str(tok.convert_ids_to_tokens(int(i))) for i in eos_ids if i is not None]
    (out_dir / "Modelfile").write_text(modelfile(gguf_name, template, stops))
    return "Modelfile"

"""Run an exported decoder with onnxruntime + tokenizers + numpy only (no torch, no transformers).

The ONNX folder holds ``model.onnx`` (+ ``model.onnx.data``), ``tokenizer.json`` and ``hdpo_onnx.json``
(written by :mod:`hdpo_core.export.onnx_export`), which names the inputs/outputs and the cache geometry:

* inputs ``input_ids [B, S]`` int64, ``attention_mask [B, P+S]`` int64, ``position_ids [B, S]`` int64,
  ``past_key_values.{i}.key|value [B, kv_heads, P, head_dim]`` float32 (P = 0 at prefill);
* outputs ``logits [B, S, vocab]`` and ``present.{i}.key|value [B, kv_heads, P+S, head_dim]``.

Batches are left-padded; position ids are ``cumsum(mask) - 1`` (clamped at 0), exactly what transformers'
``generate`` uses, so a padded row gives the same tokens as the unpadded prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONFIG_NAME = "hdpo_onnx.json"


@dataclass(frozen=True)
class OrtDecoderConfig:
    """What ``hdpo_onnx.json`` says about the graph."""

    model_file: str
    input_names: list[str]
    output_names: list[str]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    eos_token_ids: list[int]
    pad_token_id: int
    add_special_tokens: bool

    @classmethod
    def load(cls, onnx_dir: Path) -> OrtDecoderConfig:
        raw = json.loads((onnx_dir / CONFIG_NAME).read_text())
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


def position_ids_for(attention_mask: np.ndarray, new_len: int) -> np.ndarray:
    """Position ids of the last ``new_len`` tokens: ``cumsum(mask) - 1`` clamped at 0, shape ``[B, new_len]``."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    out: np.ndarray = np.maximum(pos, 0)[:, -new_len:].astype(np.int64)
    return out


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token rows to one ``[B, T]`` int64 batch; returns ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask


class OrtDecoder:
    """One onnxruntime session over the exported decoder, with a KV-cache generation loop."""

    def __init__(
        self, onnx_dir: str | Path, *, model_file: str | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.dir = Path(onnx_dir)
        self.config = OrtDecoderConfig.load(self.dir)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        path = self.dir / (model_file or self.config.model_file)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length past key/values ``[B, kv_heads, 0, head_dim]`` for the prefill call."""
        shape = (batch, self.config.num_kv_heads, 0, self.config.head_dim)
        return {
            f"past_key_values.{i}.{kv}": np.zeros(shape, np.float32)
            for i in range(self.config.num_layers)
            for kv in ("key", "value")
        }

    def step(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, past: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward: ``attention_mask`` covers past + new tokens. Returns logits ``[B, S, V]`` and the new past."""
        feeds = {
            "input_ids": input_ids.astype(np.int64),
            "attention_mask": attention_mask.astype(np.int64),
            "position_ids": position_ids_for(attention_mask, input_ids.shape[1]),
            **past,
        }
        outputs = self.session.run(None, feeds)
        named = dict(zip(self.config.output_names, outputs, strict=True))
        new_past = {
            f"past_key_values.{i}.{kv}": named[f"present.{i}.{kv}"]
            for i in range(self.config.num_layers)
            for kv in ("key", "value")
        }
        return named["logits"], new_past

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> list[list[int]]:
        """Generate new tokens per prompt (greedy when ``temperature == 0``); rows stop at EOS independently."""
        rng = np.random.default_rng(seed)
        ids, mask = left_pad(prompts, self.config.pad_token_id)
        past = self.empty_past(len(prompts))
        out: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(len(prompts), dtype=bool)
        step_ids = ids
        for _ in range(max_new_tokens):
            logits, past = self.step(step_ids, mask, past)
            nxt = _pick(logits[:, -1, :], temperature, top_p, rng)
            for row, tok in enumerate(nxt):
                if not done[row]:
                    out[row].append(int(tok))
                    done[row] = stop_at_eos and int(tok) in self.config.eos_token_ids
            if done.all():
                break
            nxt = np.where(done, self.config.pad_token_id, nxt)
            step_ids = nxt[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
        return out


def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Next token per row from ``logits [B, V]``: argmax, or temperature + nucleus (top-p) sampling."""
    if temperature <= 0:
        greedy: np.ndarray = logits.argmax(axis=-1)
        return greedy
    z = logits.astype(np.float64) / temperature
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    picks = []
    for p in probs:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        q = p[keep] / p[keep].sum()
        picks.append(rng.choice(keep, p=q))
    return np.asarray(picks, dtype=np.int64)


def generate_text(
    onnx_dir: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> tuple[str, list[int]]:
    """Tokenize ``prompt`` with ``tokenizer.json``, generate with ORT, decode. Returns ``(text, new_token_ids)``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(onnx_dir) / "tokenizer.json"))
    decoder = OrtDecoder(onnx_dir)
    prompt_ids = tok.encode(prompt, add_special_tokens=decoder.config.add_special_tokens).ids
    new = decoder.generate(
        [prompt_ids], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    return tok.decode(new[0], skip_special_tokens=True), new[0]

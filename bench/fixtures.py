"""Offline benchmark fixtures: a random-weight causal LM saved to a folder, a word-level tokenizer, and
variable-length synthetic preference pairs (text for TRL, the same token ids for hdpo-tune).

TRL needs a model *folder* (it rebuilds the reference copy from ``name_or_path``) and
tokenizes text itself, so the data is text over a word-level vocabulary ``w0 .. wN`` whose tokenization is
exactly one id per word: both trainers then see the same ids, and the token counts agree.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


@dataclass(frozen=True)
class ModelShape:
    """A Llama (CPU) or Qwen2 (GPU) shape; weights are random, built from the config (no download)."""

    family: str = "llama"
    vocab_size: int = 2000
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 688
    tie_word_embeddings: bool = False
    dtype: str = "float32"


CPU_SHAPE = ModelShape()
# Qwen2.5-0.5B's shape (494M parameters, tied embeddings)
GPU_SHAPE = ModelShape(family="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                       tie_word_embeddings=True, dtype="bfloat16")
# Qwen2.5-0.5B's layers (width, heads, MLP) at 1/6 of its depth and vocabulary: per token, the attention /
# projection / output-layer proportions of the real model, at a size a 2-core CPU trains in seconds per step.
QWEN_SLICE_SHAPE = ModelShape(family="qwen2", vocab_size=151936 // 6, hidden_size=896, num_hidden_layers=4,
                              num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                              tie_word_embeddings=True, dtype="float32")
SHAPES = {"tiny": CPU_SHAPE, "qwen-slice": QWEN_SLICE_SHAPE, "qwen-0.5b": GPU_SHAPE}


def forward_macs(row: dict, shape: ModelShape, shared_prompt: bool = True) -> tuple[float, float]:
    """(attention, total) multiply-adds of one forward pass over a pair, the output layer only on completion
    positions. ``shared_prompt`` (hdpo-tune): one packed segment ``prompt | chosen | rejected`` (the rejected
    part sees the prompt, not the chosen part); otherwise (TRL) two sequences, the prompt computed twice.
    Attention counts the score and value products (2 * d per attended key); the rest is the projections and
    the MLP. Padding is never counted: these are the FLOPs the algorithm needs, not the ones a layout wastes."""
    p, c, r = len(row["prompt_ids"]), len(row["chosen_ids"]), len(row["rejected_ids"])
    d, d_ff, layers = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers
    kv = d * shape.num_key_value_heads // shape.num_attention_heads
    if shared_prompt:
        keys, tokens = (p + c) * (p + c + 1) / 2 + r * p + r * (r + 1) / 2, p + c + r
    else:
        keys, tokens = (p + c) * (p + c + 1) / 2 + (p + r) * (p + r + 1) / 2, 2 * p + c + r
    attention = layers * 2 * d * keys
    linear = layers * tokens * (2 * d * d + 2 * d * kv + 3 * d * d_ff) + (c + r) * shape.vocab_size * d
    return attention, attention + linear


def pair_train_flops(row: dict, shape: ModelShape, *, shared_prompt: bool, lora: bool, live_reference: bool
                     ) -> float:
    """FLOPs (2 per multiply-add) one training step spends on a pair, counted honestly: the policy forward,
    its backward (2x the forward for full fine-tuning; about 1x under LoRA, which computes activation gradients
    but no weight gradients of the frozen base), and the reference forward when it is not precomputed.
    Gradient-checkpointing recomputation is not counted (as in MFU's usual definition)."""
    fwd = 2 * forward_macs(row, shape, shared_prompt)[1]
    return fwd * (2 if lora else 3) + (fwd if live_reference else 0.0)


@dataclass(frozen=True)
class LengthSpec:
    """Uniform word counts: prompt in ``prompt``, chosen/rejected each in ``completion`` (EOS adds one)."""

    prompt: tuple[int, int] = (32, 320)
    completion: tuple[int, int] = (16, 160)

    @property
    def mean_pair_tokens(self) -> float:
        """Mean unpadded prompt + chosen + rejected tokens of one pair."""
        return sum(self.prompt) / 2 + 2 * (sum(self.completion) / 2 + 1)

    def scaled_to(self, mean_pair: float) -> LengthSpec:
        f = mean_pair / self.mean_pair_tokens
        return LengthSpec(prompt=(max(1, round(self.prompt[0] * f)), max(2, round(self.prompt[1] * f))),
                          completion=(max(1, round(self.completion[0] * f)), max(2, round(self.completion[1] * f))))


CPU_LENGTHS = LengthSpec()
GPU_LENGTHS = LengthSpec(prompt=(96, 800), completion=(64, 576))  # ~1100 tokens per pair


def build_tokenizer(vocab_size: int):
    """A word-level fast tokenizer over ``w0..w{n}``; one id per whitespace-separated word, no BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(vocab_size - len(SPECIALS)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_model_folder(shape: ModelShape, folder: Path, seed: int = 0) -> int:
    """Save a random-weight model and its tokenizer to ``folder``; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    folder.mkdir(parents=True, exist_ok=True)
    common = {"vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size,
                  "num_hidden_layers": shape.num_hidden_layers, "num_attention_heads": shape.num_attention_heads,
                  "num_key_value_heads": shape.num_key_value_heads, "intermediate_size": shape.intermediate_size,
                  "tie_word_embeddings": shape.tie_word_embeddings, "max_position_embeddings": 32768,
                  "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    cfg = LlamaConfig(**common) if shape.family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, shape.dtype))
    model.save_pretrained(folder)
    build_tokenizer(shape.vocab_size).save_pretrained(folder)
    (folder / "bench_shape.json").write_text(json.dumps(asdict(shape)))
    return sum(p.numel() for p in model.parameters())


def make_pairs(n: int, lengths: LengthSpec, vocab_size: int, seed: int = 0) -> list[dict]:
    """``n`` rows ``{prompt, chosen, rejected}`` (text) plus their ids (``*_ids``; completions end with EOS)."""
    rnd = random.Random(seed)
    words = vocab_size - len(SPECIALS)

    def ids(k: int) -> list[int]:
        return [len(SPECIALS) + rnd.randrange(words) for _ in range(k)]

    def text(t: list[int]) -> str:
        return " ".join(f"w{i - len(SPECIALS)}" for i in t)

    rows = []
    for _ in range(n):
        p, c, r = (ids(rnd.randint(*lengths.prompt)), ids(rnd.randint(*lengths.completion)),
                   ids(rnd.randint(*lengths.completion)))
        # TRL appends the EOS string itself; the leading space keeps prompt+completion a word boundary
        rows.append({"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r),
                     "prompt_ids": p, "chosen_ids": c + [2], "rejected_ids": r + [2]})
    return rows


def counted_tokens(row: dict) -> int:
    """The tokens both sides count: prompt+chosen plus prompt+rejected (real tokens, no padding)."""
    return 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])

"""Tiny Llama / Qwen2 / Mistral folders with byte-level BPE tokenizers built offline with ``tokenizers``:
Llama-3 split regex (+ BOS added by a post-processor), Qwen2 split regex (digits one by one), GPT-2
ByteLevel. Weights are random with a wide init so the next-token distribution is peaked (no near-ties)."""

from __future__ import annotations

from pathlib import Path

import torch

from hdpo_core.export.gguf_tokenizer import LLAMA3_SPLIT, QWEN2_SPLIT
from tests.export.conftest import CORPUS

TEXTS = CORPUS + [
    "Tom has 146 apples and buys 148 more: 146 + 148 = 294. In 2024, 1,000,000 people.",
    "  two spaces,\tline\nbreaks\n\n and   three. Don't stop; it's 3.14159 (pi) -- or $20/month!",
    "naïve café, Zürich: 東京 🚀 ünïcödé",
] * 3
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
    "+ m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
STYLES = {
    "llama3": (LLAMA3_SPLIT, ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]),
    "qwen2": (QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "gpt2": (None, ["<pad>", "<s>", "</s>"]),
}


def byte_bpe(style: str, out: Path):  # noqa: ANN201 - a PreTrainedTokenizerFast
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    split, specials = STYLES[style]
    tk = Tokenizer(models.BPE())
    if split is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(TEXTS, trainer)
    if style == "llama3":
        tk.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
        tok.chat_template = LLAMA3_CHAT
    elif style == "qwen2":
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.chat_template = CHATML
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
        tok.chat_template = CHATML.replace("<|im_start|>", "<s>").replace("<|im_end|>", "</s>")
    tok.save_pretrained(out)
    return tok


def tiny_model(family: str, out: Path) -> Path:
    """``family`` in llama (Llama-3 tokenizer, GQA), qwen2 (Qwen2 tokenizer, qkv bias, tied), mistral (GPT-2)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    style = {"llama": "llama3", "qwen2": "qwen2", "mistral": "gpt2"}[family]
    tok = byte_bpe(style, out)
    common = {"vocab_size": len(tok) + 3, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256,
                  "initializer_range": 0.1, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                  "pad_token_id": tok.pad_token_id}
    if family == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500000.0)
    elif family == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000000.0)
    else:
        cfg = MistralConfig(**common, tie_word_embeddings=False, sliding_window=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    if family == "qwen2":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_proj.bias"):
                    p.normal_(0, 0.5)  # the biases must matter for the check to see them
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    return out

"""A tiny random Llama + character-level tokenizer, built offline, for the eval tests and the benchmark."""

from __future__ import annotations

import string
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

CHARS = string.digits + string.ascii_letters + " +-*/=#?.,:()\n"


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                bos_token="<bos>", unk_token="<unk>")


def tiny_model(vocab_size: int, *, seed: int = 0, hidden: int = 32, layers: int = 2) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden,
                                      max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    # make the random model peakier so greedy is stable and sampling has structure
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    return model.eval()


def save_tiny(folder: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), seed=seed, hidden=hidden, layers=layers)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

"""In-memory tiny Llama and random token pairs for core tests (no tokenizer needed)."""

import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hdpo_core.tokenize import TokenizedPair

VOCAB = 61
EOS = 2
PAD = 0


def tiny_llama(seed: int = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg)


def random_pairs(n: int, seed: int = 0, max_prompt: int = 12, max_completion: int = 10) -> list[TokenizedPair]:
    rnd = random.Random(seed)

    def toks(k: int) -> tuple[int, ...]:
        return tuple(rnd.randrange(3, VOCAB) for _ in range(k))

    out = []
    for i in range(n):
        prompt = toks(rnd.randint(1, max_prompt))
        chosen = toks(rnd.randint(1, max_completion)) + (EOS,)
        rejected = toks(rnd.randint(1, max_completion)) + (EOS,)
        out.append(TokenizedPair(prompt, chosen, rejected, f"pairs:{i + 1}"))
    return out

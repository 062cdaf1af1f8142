"""Tokenizer, tiny Llama, SFT loop and batched sampling for the offline demo model.

Everything runs on CPU, single-threaded, with deterministic algorithms, so the same seed gives the same
weights and samples bit for bit on the same software stack.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # rayon threads: keep the build single-core

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"

# The chat template renders a user turn in the task's own layout ("Question: ...\nAnswer:") and an
# assistant turn as " content<eos>", so conversational rows tokenize exactly like standard ones and
# the prompt (rendered with add_generation_prompt) is always a token prefix of prompt + reply.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Question: ' + message['content'] + '\\nAnswer:' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass(frozen=True)
class ModelSize:
    """Shape of the tiny Llama; defaults give ~0.9M parameters (~3.5 MB float32)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    max_positions: int = 160


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit tokens (so arithmetic is done digit by digit), ``<pad>`` = 0
    and ``<eos>`` = 1, no BOS. Digits and the space before them are always separate pre-tokens, so a
    prompt ending in ``Answer:`` is a token prefix of ``prompt + " 3 + 5 ..."``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, model_max_length=160)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, size: ModelSize, *, pad_id: int, eos_id: int) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama (tied embeddings) from the current torch seed."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions, tie_word_embeddings=True,
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=eos_id, max_new_tokens=48)
    return model


def encode_examples(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
                    completions: Sequence[str]) -> list[tuple[list[int], int]]:
    """``(ids(prompt + completion) + [eos], len(ids(prompt)))`` per example; raises if a prompt's tokens
    are not a prefix of the full text's tokens (the boundary rule the trainer depends on)."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + c for p, c in zip(prompts, completions, strict=True)],
                         add_special_tokens=False)["input_ids"]
    out = []
    for p, f, text in zip(prompt_ids, full_ids, prompts, strict=True):
        if f[: len(p)] != p:
            raise ValueError(f"prompt is not a token prefix of prompt+completion: {text!r}")
        out.append((list(f) + [tokenizer.eos_token_id], len(p)))
    return out


def _collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad to the longest row. Returns ids, attention mask and labels, each ``[B, T]``; labels are
    -100 on the prompt and padding so only the worked solution and its EOS are learned."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (seq, n_prompt) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, mask, labels


def train_sft(model: LlamaForCausalLM, examples: Sequence[tuple[list[int], int]], *, steps: int,
              batch_size: int, lr: float, pad_id: int, log_every: int = 200) -> list[float]:
    """AdamW with linear warm-up and cosine decay over ``steps`` batches drawn in order from
    ``examples`` (fresh problems, so no epochs). Returns the loss of each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    for step in range(steps):
        start = (step * batch_size) % len(examples)
        ids, mask, labels = _collate(examples[start: start + batch_size], pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  sft step {step:5d}/{steps}  loss {loss.item():.4f}", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def sample(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], *,
           num_samples: int, temperature: float, seed: int, batch_size: int = 64,
           max_new_tokens: int = 48) -> list[list[str]]:
    """``num_samples`` completions per prompt (pure temperature sampling: no top-k/top-p), batched with
    left padding. Each batch reseeds torch with ``seed + batch index``, so results do not depend on
    anything sampled before. Completions are decoded up to (not including) EOS."""
    tokenizer.padding_side = "left"
    flat = [p for p in prompts for _ in range(num_samples)]
    texts: list[str] = []
    for b, start in enumerate(range(0, len(flat), batch_size)):
        chunk = flat[start: start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed + b)
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return [texts[i * num_samples: (i + 1) * num_samples] for i in range(len(prompts))]

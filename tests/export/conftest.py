"""Tiny run folders built offline: a BPE tokenizer, a tiny Llama + LoRA adapter, a tiny GPT-2 (full FT)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: no real Hub call can happen

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from hdpo_core.artifact import write_manifest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is the capital of France? Answer: Paris.",
    "Write a short poem about the sea. The waves are blue and the wind is free.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Hello, how are you today? I am fine, thank you. The aligned model answers carefully.",
] * 4
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


def make_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = CHAT
    tok.save_pretrained(out)
    return tok


def write_spec(run: Path, **sections) -> None:
    spec = {
        "model": {"name_or_path": "tiny-base"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": "org/tiny-prefs"},
        "hdpo": {"alpha": 0.9, "beta": 0.1},
        "train": {"learning_rate": 5e-5, "epochs": 1.0},
        "output": {"dir": str(run)},
        "merge": {"enabled": True},
        "export": {"onnx": {"enabled": True}},
        "hub": {"repo_id": "me/tiny-hdpo", "private": True},
        "eval": {},
    }
    for k, v in sections.items():
        spec[k] = v
    (run / "job.resolved.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture(scope="session")
def llama_lora_template(tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    base_dir, run = root / "base", root / "run"
    tok = make_tokenizer(base_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir)  # so the adapter records base_model_name_or_path
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # non-zero B so the merge actually changes the weights
    (run / "final").mkdir(parents=True)
    peft_model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    write_manifest(run / "final")  # as the train stage publishes it
    write_spec(run)
    return run


@pytest.fixture(scope="session")
def gpt2_full_template(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    run = tmp_path_factory.mktemp("gpt2") / "run"
    tok = make_tokenizer(run / "final")
    torch.manual_seed(1)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(run / "final")
    write_manifest(run / "final")
    write_spec(run, lora=None, merge={"enabled": True, "dtype": "float32"})
    return run


def copy_run(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


@pytest.fixture()
def llama_run(llama_lora_template, tmp_path) -> Path:
    return copy_run(llama_lora_template, tmp_path / "run")


@pytest.fixture()
def gpt2_run(gpt2_full_template, tmp_path) -> Path:
    return copy_run(gpt2_full_template, tmp_path / "run")

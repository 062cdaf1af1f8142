"""The tokenizer part of a GGUF file: vocabulary, merges, token types, special ids, pre-tokenizer name.

A GGUF carries no ``tokenizer.json``; llama.cpp rebuilds the tokenizer from the token list, the BPE merges and
one *name* (``tokenizer.ggml.pre``) that selects its built-in pre-tokenizer regexes. That name is the hard
part: a wrong one loads fine and then splits text differently from training (numbers, spaces, newlines). So
the name is derived from the ``pre_tokenizer`` in ``tokenizer.json`` by structure, only for the layouts whose
llama.cpp regexes are the same as the Hugging Face ones, and anything else is refused with one line:

* ``ByteLevel(use_regex=True)`` (GPT-2) -> ``gpt-2``
* ``Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`` (StarCoder; the demo tokenizer)
  -> ``starcoder`` (llama.cpp: ``\\p{N}`` then the GPT-2 regex)
* ``Sequence[Split(<Llama-3 regex>), ByteLevel(use_regex=False)]`` -> ``llama-bpe``
* ``Sequence[Split(<Qwen2 regex>), ByteLevel(use_regex=False)]`` -> ``qwen2``

Only byte-level BPE vocabularies (``tokenizer.ggml.model = gpt2``) are written; SentencePiece-style ones
(Llama 2, Mistral v0.1) are refused for now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdpo_core.errors import InputError

if TYPE_CHECKING:
    import gguf
    from transformers import PreTrainedTokenizerBase

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
# gguf TokenType values (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GgufVocab:
    """What :func:`write_vocab` puts in the file."""

    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def _byte_level(node: dict[str, Any], *, use_regex: bool) -> bool:
    return (
        node.get("type") == "ByteLevel"
        and node.get("use_regex", True) is use_regex
        and not node.get("add_prefix_space", False)
    )


def pre_tokenizer_name(pre: dict[str, Any] | None, where: str) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a ``tokenizer.json`` pre_tokenizer; InputError if none fits."""
    if pre is None:
        raise InputError(f"{where}: tokenizer.json has no pre_tokenizer; GGUF export needs a byte-level BPE one")
    if _byte_level(pre, use_regex=True):
        return "gpt-2"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if parts and len(parts) == 2:
        first, second = parts
        if first.get("type") == "Digits" and first.get("individual_digits") and _byte_level(second, use_regex=True):
            return "starcoder"
        if first.get("type") == "Split" and _byte_level(second, use_regex=False):
            pattern = (first.get("pattern") or {}).get("Regex")
            if pattern in SPLITS and first.get("behavior") == "Isolated" and not first.get("invert"):
                return SPLITS[pattern]
    raise InputError(
        f"{where}: tokenizer pre_tokenizer {json.dumps(pre)[:160]} has no known llama.cpp equivalent "
        "(supported: GPT-2 ByteLevel, StarCoder digits + ByteLevel, Llama-3 and Qwen2 split regexes); "
        "turn export.gguf off for this model"
    )


def _merges(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def adds_bos(tok: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts a BOS before plain text (Llama 3's post-processor does, Qwen2's does not):
    written as ``tokenizer.ggml.add_bos_token``, so llama.cpp and Ollama add it to every prompt themselves."""
    probe = tok("a")["input_ids"]
    return tok.bos_token_id is not None and bool(probe) and probe[0] == tok.bos_token_id


def read_vocab(model_dir: Path, vocab_size: int) -> GgufVocab:
    """Read ``tokenizer.json`` (+ tokenizer config, chat template) of a merged model folder.

    ``vocab_size`` is the model's embedding rows: ids the tokenizer does not use become ``[PAD<i>]`` tokens
    of type UNUSED, as llama.cpp's own converter writes them, so the token list matches the embedding.
    """
    from transformers import AutoTokenizer

    where = str(model_dir / "tokenizer.json")
    if not (model_dir / "tokenizer.json").exists():
        raise InputError(f"{where} not found: GGUF export needs a fast (tokenizers) tokenizer")
    raw = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = raw.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise InputError(
            f"{where}: tokenizer model {model.get('type')} (byte_fallback={model.get('byte_fallback')}) is not "
            "byte-level BPE; only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2 kind) are written to GGUF"
        )
    if raw.get("normalizer") not in (None, {"type": "NFC"}):
        raise InputError(f"{where}: tokenizer normalizer {raw['normalizer']} has no llama.cpp equivalent")
    pre = pre_tokenizer_name(raw.get("pre_tokenizer"), where)
    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: t for t, i in model["vocab"].items()}
    types = dict.fromkeys(by_id, NORMAL)
    for added in raw.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    top = max(by_id) + 1
    if top > vocab_size:
        raise InputError(f"{where}: tokenizer has ids up to {top - 1} but the model has {vocab_size} embeddings")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, UNUSED) for i in range(vocab_size)]
    add_bos = adds_bos(tok)
    return GgufVocab(
        pre=pre,
        tokens=tokens,
        token_types=token_types,
        merges=_merges(model),
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        add_bos=add_bos,
        chat_template=tok.chat_template if isinstance(tok.chat_template, str) else None,
    )


def write_vocab(writer: gguf.GGUFWriter, vocab: GgufVocab, *, eos_id: int | None) -> None:
    """Add the tokenizer keys; ``eos_id`` (from generation_config) wins over the tokenizer's."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    eos = eos_id if eos_id is not None else vocab.eos_id
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)

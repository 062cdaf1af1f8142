"""Shared pytest fixtures: a tiny Llama folder and preference files, built once per session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: tests never reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.fixtures.tiny import build_tiny_llama, write_pairs_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (hidden 32, 2 layers) with a BPE tokenizer, pad/eos and a chat template. Read-only:
    copy it before changing anything in it."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 standard-format preference pairs (prompt/chosen/rejected strings) as JSONL."""
    return write_pairs_jsonl(tmp_path_factory.mktemp("pairs") / "prefs.jsonl", 16)


@pytest.fixture(scope="session")
def tiny_conv_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 conversational preference pairs (message lists) as JSONL."""
    return write_pairs_jsonl(tmp_path_factory.mktemp("pairs") / "prefs_conv.jsonl", 16, conversational=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where CUDA is; CI has none, so they are skipped there, never failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

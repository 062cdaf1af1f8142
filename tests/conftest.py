"""Shared pytest fixtures: a tiny Llama folder and preference files, built once per session, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: tests never reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per process (this one and the commands the tests start), unless the caller sets another
# count: the tests' models are tiny (hidden 32), where a second thread buys nothing and its hand-offs cost,
# a lot on a busy machine (the same batched sampling, load 12 on 2 cores: 4.0 s of CPU with 2 threads,
# 0.08 s with 1; docs/testing.md). Nothing here depends on the thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def pytest_configure(config: pytest.Config) -> None:
    """torch reads OMP_NUM_THREADS when it is first imported; set it here as well in case a plugin was first."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where CUDA is; CI has none, so they are skipped there, never failed."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

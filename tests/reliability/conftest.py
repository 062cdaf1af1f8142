"""The reference result every fault test compares with: the standard job run once, uninterrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reliability._jobs import final_weights, run_cli, write_job


@pytest.fixture(scope="session")
def reference_final(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                    tiny_pairs: Path) -> dict[str, torch.Tensor]:
    """Final adapter weights of the standard 16-step job run straight through (in-process)."""
    folder = tmp_path_factory.mktemp("reference")
    result = run_cli("run", str(write_job(folder, tiny_model_dir, tiny_pairs)))
    assert result.exit_code == 0, result.output
    return final_weights(folder / "run")

"""The benchmark's multiply-add model (``bench.fixtures.forward_macs``) counts exactly the (query, key) pairs that
the engine's prompt-sharing packed layout lets attend: it explains the length sweep, so it must be right."""

from __future__ import annotations

import pytest

from bench.fixtures import CPU_SHAPE, QWEN_SLICE_SHAPE, LengthSpec, forward_macs, make_pairs
from hdpo_core.batching import packed_batch
from hdpo_core.forward import segments_to_mask
from hdpo_core.tokenize import TokenizedPair


@pytest.mark.parametrize("shape", [CPU_SHAPE, QWEN_SLICE_SHAPE])
def test_attention_macs_match_the_packed_mask(shape) -> None:
    rows = make_pairs(5, LengthSpec(prompt=(3, 40), completion=(1, 30)), shape.vocab_size, seed=4)
    for row in rows:
        pair = TokenizedPair(tuple(row["prompt_ids"]), tuple(row["chosen_ids"]), tuple(row["rejected_ids"]), "r")
        batch = packed_batch([pair], 0, row_tokens=4096, share_prompt=True)
        mask = segments_to_mask(batch.segments, *batch.input_ids.shape)
        allowed = int(mask[0, 0, :sum(map(len, (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)))].sum())
        attention, total = forward_macs(row, shape)
        assert attention == 2 * shape.hidden_size * shape.num_hidden_layers * allowed
        assert 0 < attention < total


def _bench(tmp_path, *args: str) -> dict:
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(root / "bench" / "run.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=root)  # a hang guard, not a speed check: a busy machine is slow
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (result,) = out.glob("*.json")
    return json.loads(result.read_text())


@pytest.mark.e2e  # the benchmark and its child processes
def test_bench_runs_both_engines_side_by_side(tmp_path) -> None:
    """The benchmark's plumbing (one step each, not a measurement): both engines train on the same pairs and
    count the same tokens, so the ratio compares like with like."""
    res = _bench(tmp_path, "--quick", "--mode", "lora", "--steps", "1", "--warmup", "0", "--batch", "2")
    runs = {r["engine"]: r for r in res["runs"]}
    assert set(runs) == {"hdpo", "trl"}
    assert runs["hdpo"]["tokens"] == runs["trl"]["tokens"] and runs["hdpo"]["tokens"][0] > 0
    assert "| lora | trl |" in res["table"] and "1.00x" in res["table"]


@pytest.mark.e2e  # the benchmark and its child processes
def test_bench_length_sweep_plumbing(tmp_path) -> None:
    res = _bench(tmp_path, "--sweep-lengths", "--mode", "full", "--reps", "1", "--steps", "1", "--warmup", "0",
                 "--budget", "1024")
    points = res["sweep"]["points"]
    assert [p["mean_pair_tokens"] for p in points] == [256, 512, 1024, 2048]
    shares = [p["attention_share"] for p in points]
    assert shares == sorted(shares) and points[0]["vs_256"] == 1.0


@pytest.mark.e2e  # the benchmark and its child processes
def test_bench_max_batch_stops_at_the_memory_limit(tmp_path) -> None:
    """--max-batch doubles the batch until a try runs out of memory (here a host-memory budget, the CPU's
    stand-in for GPU memory) and reports the last batch that fitted."""
    res = _bench(tmp_path, "--max-batch", "--engines", "hdpo", "--mode", "lora", "--batch", "8", "--max-batch-cap",
                 "128", "--host-mem-mb", "2500")
    r = res["max_batch"]["hdpo"]
    tried = r["tried"]
    assert [t["batch"] for t in tried] == [8 * 2**i for i in range(len(tried))]
    assert all(not t["oom"] for t in tried[:-1]) and tried[-1]["oom"] and "allocate" in tried[-1]["error"]
    assert r["largest_batch"] == tried[-2]["batch"] >= 8
    assert tried[-2]["peak_mb"] > tried[0]["peak_mb"]


def test_oom_is_recognised_through_wrapping() -> None:
    import torch

    from bench.child import is_oom
    from hdpo_core.errors import RunError

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as inner:
            raise RunError("step 3 failed") from inner
    except RunError as exc:
        assert is_oom(exc)
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert not is_oom(ValueError("shapes do not match")) and not is_oom(KeyboardInterrupt())

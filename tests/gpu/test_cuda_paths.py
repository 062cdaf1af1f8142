"""The fast paths on a CUDA GPU (marked ``gpu``: skipped where CUDA is absent, e.g. CI). Run them on a lent
device with ``pytest -m gpu tests/gpu``; every CPU equivalence test has its GPU counterpart here."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from hdpo_core.alpha import ScheduledAlpha
from hdpo_core.batching import packed_batch
from hdpo_core.forward import SequenceScorer, score
from hdpo_core.logps import chunked_token_logps
from hdpo_core.trainer import TrainOptions, TrainPaths, train
from tests.core._tiny import PAD, random_pairs, tiny_llama
from tests.perf.test_fast_paths import _simple

pytestmark = pytest.mark.gpu


def test_segment_kernel_equals_padded_on_cuda() -> None:
    model = tiny_llama(seed=3).cuda().eval()
    pairs = random_pairs(8, seed=5)
    with torch.no_grad():
        cpu_model = copy.deepcopy(model).cpu()
        logps, _, ent = _simple(cpu_model, pairs)
        fast = score(SequenceScorer(model, chunk_size=7), packed_batch(pairs, PAD, row_tokens=10**9,
                                                                       share_prompt=True).to("cuda"))
    torch.testing.assert_close(fast.logps.cpu(), logps, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.entropy_sum.cpu(), ent, atol=1e-3, rtol=0)


def test_chunked_logps_bound_gpu_memory() -> None:
    """The custom autograd Function (hdpo_core/logps.py) keeps one [chunk, vocab] block, not [tokens, vocab]."""
    tokens, hidden, vocab = 8192, 512, 65536
    weight = torch.randn(vocab, hidden, device="cuda", requires_grad=True)
    h = torch.randn(tokens, hidden, device="cuda", requires_grad=True)
    tgt = torch.randint(0, vocab, (tokens,), device="cuda")

    def peak(fn) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    full = peak(lambda: torch.log_softmax((h @ weight.T).float(), -1).gather(-1, tgt[:, None]))
    chunked = peak(lambda: chunked_token_logps(h, weight, tgt, chunk_size=512)[0])
    assert chunked < 0.25 * full, (chunked, full)


def test_fused_adamw_on_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from accelerate import Accelerator

    seen = []
    adamw = torch.optim.AdamW

    class Recording(adamw):  # type: ignore[misc, valid-type]
        def __init__(self, params, **kw):  # noqa: ANN001
            seen.append(kw.get("fused"))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model = tiny_llama(seed=0)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    opts = TrainOptions(total_steps=2, batch_size=4, micro_batch_size=4, learning_rate=1e-3, save_every=100)
    result = train(Accelerator(), model, reference, random_pairs(8, seed=1), pad_token_id=PAD,
                   alpha=ScheduledAlpha(0.9), opts=opts, paths=TrainPaths(tmp_path / "ck", tmp_path / "final"),
                   save_final=lambda m: None)
    assert seen == [True]
    assert result is not None


def test_activation_offloading_lowers_gpu_peak_memory() -> None:
    from hdpo_core.steps import LossSettings, run_micro_batches

    def peak(offload: bool) -> int:
        model = tiny_llama(seed=0).cuda().train()
        pairs = random_pairs(64, seed=2, max_prompt=120, max_completion=100)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_micro_batches([list(range(64))], pairs, lambda ps: packed_batch(ps, PAD, row_tokens=10**9,
                                                                            share_prompt=True),
                          SequenceScorer(model), lambda idx, b: _reference(model, b),
                          LossSettings(0.9, 0.1, 0.0), loss_scale=1.0, backward=lambda loss, last: loss.backward(),
                          device=torch.device("cuda"), offload=offload)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    assert peak(True) < 0.7 * peak(False)


@torch.no_grad()
def _reference(model, batch):  # noqa: ANN001, ANN202
    return score(SequenceScorer(model), batch)



def _train_steps(tmp: Path, steps: int, accelerator=None, **opts):  # noqa: ANN001, ANN003, ANN202
    from accelerate import Accelerator

    model = tiny_llama(seed=0)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    logged: list[dict] = []
    from hdpo_core.trainer import TrainHooks

    options = {"total_steps": steps, "batch_size": 8, "micro_batch_size": 2, "learning_rate": 1e-3,
               "save_every": 10**6, **opts}
    train(accelerator or Accelerator(), model, reference, random_pairs(16, seed=1), pad_token_id=PAD,
          alpha=ScheduledAlpha(0.9), opts=TrainOptions(**options), paths=TrainPaths(None, tmp / "final"),
          save_final=lambda m: None, hooks=TrainHooks(on_metrics=logged.append, on_message=lambda s: None))
    return logged


def test_one_host_sync_per_training_step_on_cuda(tmp_path: Path) -> None:
    """torch's own sync detector (``set_sync_debug_mode``) counts every synchronizing CUDA call: the syncs of
    3 steps minus those of 1 step are 2 steps' worth, with 4 micro-batches per step."""
    import warnings

    def syncs(steps: int) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _train_steps(tmp_path / str(steps), steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    per_step = (syncs(3) - syncs(1)) / 2
    assert per_step <= 2, per_step  # the one read of the step's numbers (+ at most the batch's pinned copy)


def test_fp16_overflow_lowers_the_loss_scale_instead_of_stopping(tmp_path: Path) -> None:
    """A GradScaler overflow is skipped by the scaler and the scale drops; on_nonfinite 'stop' is not hit."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision="fp16")
    acc.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**30)  # guaranteed overflow at the start
    logged = _train_steps(tmp_path, 24, accelerator=acc, on_nonfinite="stop", max_grad_norm=1.0)
    skipped = [m["skipped"] for m in logged]
    assert skipped[0] and not skipped[-1], skipped
    assert acc.scaler.get_scale() < 2.0**30

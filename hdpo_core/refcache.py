"""The reference's log-probs: scored live (:func:`live_reference`), or computed once and cached on disk.

The reference never changes during training, so its log-probs can be computed in one no-grad pass and
reused by every step, by a resumed run, and by later runs on the same model and data (a sweep over alpha).
The cache key covers what the numbers depend on: the model's weights fingerprint and dtype, and the exact
token ids of every pair (hence the data, the tokenizer, the chat template, max_length and truncation).
Here the cache is a plain safetensors
file keyed by content, written atomically, and verified against the pair count when loaded.

Distributed: :func:`compute_ref_logps_sharded` gives rank ``r`` the micro-batches ``r, r + world, ...`` of the
single-process pass (the very same batches, so the numbers are bitwise those of one process) and all-gathers
the results; only the main process writes the cache file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .batching import TokenBatch, to_device
from .forward import SequenceScorer, SequenceScores, score
from .inputs import check_file
from .tokenize import TokenizedPair

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class RefLogps:
    """Reference results for every training pair: ``logps`` ``[pairs, 2]`` (chosen, rejected),
    ``entropy_sum`` ``[pairs, 2]`` and ``token_counts`` ``[pairs, 2]``."""

    logps: torch.Tensor
    entropy_sum: torch.Tensor
    token_counts: torch.Tensor

    def to(self, device: torch.device | str) -> RefLogps:
        return RefLogps(self.logps.to(device), self.entropy_sum.to(device), self.token_counts.to(device))

    def take(self, indices: Sequence[int]) -> SequenceScores:
        idx = to_device(torch.as_tensor(list(indices), dtype=torch.long), self.logps.device)
        return SequenceScores(self.logps[idx].reshape(-1), self.entropy_sum[idx].reshape(-1),
                              self.token_counts[idx].reshape(-1))


def live_reference(frozen: nn.Module | None, policy: nn.Module, *, device: torch.device | str,
                   chunk_size: int = 1024,
                   autocast: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
                   ) -> Callable[[TokenBatch], SequenceScores]:
    """The reference's scores of a batch, live: THE place that says what "the reference" is.

    Full fine-tuning: the frozen copy ``frozen`` (moved to ``device``). LoRA (``frozen is None``): the policy
    itself with its adapter switched off, so there is no second copy of the weights. ``policy`` may be the
    trainer's (unwrapped, possibly FSDP-sharded) :class:`SequenceScorer` or a bare model. No grad, under
    ``autocast`` (the accelerator's mixed precision), so it equals the numbers the loss compares against.
    """
    if frozen is not None:
        scorer = SequenceScorer(frozen.to(device), chunk_size=chunk_size).eval()
        mode: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
    else:
        scorer = policy if isinstance(policy, SequenceScorer) else SequenceScorer(policy, chunk_size=chunk_size)
        mode = scorer.reference_mode

    def scores(batch: TokenBatch) -> SequenceScores:
        with torch.no_grad(), autocast(), mode():
            return score(scorer, batch)

    return scores


def cache_key(model_fingerprint: str, dtype: str, pairs: Sequence[TokenizedPair]) -> str:
    h = hashlib.sha256(f"{model_fingerprint}|{dtype}|{len(pairs)}".encode())
    for p in pairs:
        h.update(repr((p.prompt_ids, p.chosen_ids, p.rejected_ids)).encode())
    return h.hexdigest()[:24]


def compute_ref_logps(pairs: Sequence[TokenizedPair], make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch],
                      score_ref: Callable[[TokenBatch], SequenceScores], batch_pairs: int) -> RefLogps:
    """Score every pair with the reference, ``batch_pairs`` at a time (no grad)."""
    logps, ent, counts = [], [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_pairs):
            s = score_ref(make_batch(pairs[start:start + batch_pairs]))
            logps.append(s.logps.float().cpu().view(-1, 2))
            ent.append(s.entropy_sum.float().cpu().view(-1, 2))
            counts.append(s.token_counts.cpu().view(-1, 2))
    return RefLogps(torch.cat(logps), torch.cat(ent), torch.cat(counts))


_COLS = 7  # logps (2), entropy_sum (2), token_counts (2), pair index (-1 = padding)


def compute_ref_logps_sharded(pairs: Sequence[TokenizedPair],
                              make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch],
                              score_ref: Callable[[TokenBatch], SequenceScores], batch_pairs: int, *, rank: int,
                              world: int, gather: Callable[[torch.Tensor], torch.Tensor]) -> RefLogps:
    """:func:`compute_ref_logps` split over ``world`` ranks; every rank gets the full result.

    ``gather`` all-gathers a ``[k, 7]`` float64 tensor (same ``k`` on every rank) into ``[world * k, 7]``
    (``accelerator.gather``). Rank ``rank`` scores micro-batches ``rank, rank + world, ...``, padded to the same
    row count; float64 carries float32 log-probs and integer counts exactly.
    """
    starts = list(range(0, len(pairs), batch_pairs))
    per_rank = -(-len(starts) // world)
    out = torch.full((per_rank * batch_pairs, _COLS), -1.0, dtype=torch.float64)
    with torch.no_grad():
        for j in range(per_rank):
            b = j * world + rank
            if b >= len(starts):
                break
            idx = list(range(starts[b], min(starts[b] + batch_pairs, len(pairs))))
            s = score_ref(make_batch([pairs[i] for i in idx]))
            rows = slice(j * batch_pairs, j * batch_pairs + len(idx))
            out[rows, 0:2] = s.logps.float().cpu().view(-1, 2).double()
            out[rows, 2:4] = s.entropy_sum.float().cpu().view(-1, 2).double()
            out[rows, 4:6] = s.token_counts.cpu().view(-1, 2).double()
            out[rows, 6] = torch.tensor(idx, dtype=torch.float64)
    allrows = gather(out).cpu()
    allrows = allrows[allrows[:, 6] >= 0]
    order = allrows[:, 6].long()
    if sorted(order.tolist()) != list(range(len(pairs))):
        raise RuntimeError(f"reference log-prob shards do not cover the {len(pairs)} pairs exactly once")
    full = torch.empty((len(pairs), _COLS), dtype=torch.float64)
    full[order] = allrows
    return RefLogps(full[:, 0:2].float(), full[:, 2:4].float(), full[:, 4:6].long())


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"ref-logps-{key}.safetensors"


def load_cached(path: Path, num_pairs: int) -> RefLogps | None:
    """The cached tensors if ``path`` holds a complete cache for ``num_pairs`` pairs, else None."""
    if not os.path.lexists(path):
        return None
    check_file(path, "reference log-prob cache file", max_bytes=num_pairs * 64 + (1 << 20),
               fix="delete it (it is recomputed)")
    try:
        t = load_file(str(path))
        if t["logps"].shape == (num_pairs, 2):
            return RefLogps(t["logps"], t["entropy_sum"], t["token_counts"])
    except Exception:  # a damaged cache file is recomputed, never trusted
        pass
    return None


def save_cached(path: Path, ref: RefLogps) -> None:
    """Write the cache atomically (call on the main process only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"logps": ref.logps.contiguous(), "entropy_sum": ref.entropy_sum.contiguous(),
               "token_counts": ref.token_counts.contiguous()}, str(tmp))
    os.replace(tmp, path)


def precompute_reference(accelerator: Accelerator, frozen: nn.Module | None, policy: nn.Module,
                         sets: Sequence[tuple[Sequence[TokenizedPair], Path | None]],
                         make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch], *, batch_pairs: int,
                         chunk_size: int = 1024) -> list[tuple[RefLogps, bool]]:
    """Reference log-probs of each ``(pairs, cache_file)`` set, loaded from ``cache_file`` or computed (over
    all ranks) and written there; returns ``(ref, cache_hit)`` per set. Afterwards the frozen full-FT copy
    goes back to the host: training and evaluation then read these tensors, never the model.

    The main process decides hit or miss (its disk is the one that counts) and tells the others. A hit is
    broadcast from the main process; a miss is scored in shards over all ranks (:func:`compute_ref_logps_sharded`)
    and gathered, and only the main process writes the file, so the cache may live on a node-local disk.
    Call before ``accelerator.prepare`` (not under DeepSpeed ZeRO-3, which partitions weights at load).
    """
    device = accelerator.device
    if frozen is None:
        policy.to(device)  # LoRA: the policy with its adapter off is the reference (prepare() leaves it placed)
    score_ref = live_reference(frozen, policy, device=device, chunk_size=chunk_size, autocast=accelerator.autocast)
    out = [_load_or_compute(accelerator, path, pairs, lambda ps: make_batch(ps).to(device), score_ref, batch_pairs)
           for pairs, path in sets]
    if frozen is not None:
        frozen.to("cpu")
    return out


def _load_or_compute(accelerator: Accelerator, path: Path | None, pairs: Sequence[TokenizedPair],
                     make_batch: Callable[[Sequence[TokenizedPair]], TokenBatch],
                     score_ref: Callable[[TokenBatch], SequenceScores], batch_pairs: int) -> tuple[RefLogps, bool]:
    world = accelerator.num_processes
    cached = load_cached(path, len(pairs)) if path is not None and accelerator.is_main_process else None
    if world > 1:
        from accelerate.utils import broadcast_object_list

        box = [cached]
        broadcast_object_list(box, from_process=0)
        cached = box[0]
    if cached is not None:
        return cached, True
    ref = compute_ref_logps_sharded(pairs, make_batch, score_ref, batch_pairs, rank=accelerator.process_index,
                                    world=world, gather=lambda t: accelerator.gather(t.to(accelerator.device)))
    if path is not None and accelerator.is_main_process:
        save_cached(path, ref)
    accelerator.wait_for_everyone()
    return ref, False

"""Reference log-probs computed once and cached on disk.

The reference never changes during training, so its log-probs can be computed in one no-grad pass and
reused by every step, by a resumed run, and by later runs on the same model and data (a sweep over alpha).
The cache key covers what the numbers depend on: the model's weights fingerprint and dtype, and the exact
token ids of every pair (hence the data, the tokenizer, the chat template, max_length and truncation).
TRL's precompute has been its most-patched area (anchors.md §3.2); here the cache is a plain safetensors
file keyed by content, written atomically, and verified against the pair count when loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .batching import TokenBatch
from .forward import SequenceScores
from .tokenize import TokenizedPair


@dataclass(frozen=True)
class RefLogps:
    """Reference results for every training pair: ``logps`` ``[pairs, 2]`` (chosen, rejected),
    ``entropy_sum`` ``[pairs, 2]`` and ``token_counts`` ``[pairs, 2]``."""

    logps: torch.Tensor
    entropy_sum: torch.Tensor
    token_counts: torch.Tensor

    def take(self, indices: Sequence[int]) -> SequenceScores:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return SequenceScores(self.logps[idx].reshape(-1), self.entropy_sum[idx].reshape(-1),
                              self.token_counts[idx].reshape(-1))


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


def load_or_compute(cache_dir: Path | None, key: str, num_pairs: int, compute: Callable[[], RefLogps]) -> tuple[RefLogps, bool]:
    """Return ``(ref, hit)``: the cached tensors for ``key`` if present and complete, else computed and saved."""
    path = cache_dir / f"ref-logps-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            t = load_file(str(path))
            if t["logps"].shape == (num_pairs, 2):
                return RefLogps(t["logps"], t["entropy_sum"], t["token_counts"]), True
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    ref = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"logps": ref.logps.contiguous(), "entropy_sum": ref.entropy_sum.contiguous(),
                   "token_counts": ref.token_counts.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return ref, False

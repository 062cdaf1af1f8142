"""FSDP2 on CPU in one process: ``fully_shard`` over gloo (accelerate refuses FSDP on CPU; torch does not).

    python tests/distributed/_fsdp2_cpu.py full|lora   -> one JSON line on stdout

Shards the scorer the way accelerate's FSDP2 auto-wrap does (one unit per ``_no_split_modules`` class, then
the root) and compares, against the same model unsharded: held-out evaluation through the prepared scorer
with the session's reference, and one training micro-batch (loss and gradient norm). It also runs evaluation
the old way, a fresh ``SequenceScorer`` around the sharded policy, and reports how that fails.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(mode: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from hdpo_core.forward import SequenceScorer
    from hdpo_core.model import LoraOptions, apply_lora
    from hdpo_core.refcache import live_reference
    from hdpo_core.steps import LossSettings, evaluate_pairs, run_micro_batches
    from hdpo_core.trainer import TrainOptions, make_batcher
    from tests.core._tiny import PAD, random_pairs, tiny_llama

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    policy = tiny_llama(seed=0)
    reference = None
    if mode == "lora":
        policy = apply_lora(policy, LoraOptions(r=4, alpha=8, dropout=0.0))
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    else:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    pairs = random_pairs(6, seed=4)
    make_batch = make_batcher(TrainOptions(total_steps=1), PAD, policy)
    settings = LossSettings(0.8, 0.1)
    cpu = torch.device("cpu")

    def measure(scorer: torch.nn.Module, raw: torch.nn.Module) -> dict:
        ref = live_reference(reference, raw, device=cpu)
        means = evaluate_pairs(scorer, lambda idx, b: ref(b), pairs, make_batch, settings, micro_batch_size=4,
                               device=cpu)
        sums = run_micro_batches([[0, 1, 2]], pairs, make_batch, scorer, lambda idx, b: ref(b), settings,
                                 loss_scale=1 / 3, backward=lambda loss, last: loss.backward(), device=cpu)
        grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                 for p in scorer.parameters() if p.grad is not None]
        return {"eval": means, "train_loss_sum": sums.packed(cpu).tolist()[0],
                "grad_norm": torch.stack([g.float().norm() for g in grads]).norm().item()}

    plain_scorer = SequenceScorer(copy.deepcopy(policy))
    plain = measure(plain_scorer, plain_scorer)
    scorer = SequenceScorer(policy)
    layer_classes = set(scorer._no_split_modules)
    units = [m for m in scorer.modules() if type(m).__name__ in layer_classes]
    for m in units:
        fully_shard(m)
    fully_shard(scorer)
    sharded = measure(scorer, scorer)
    fresh = SequenceScorer(policy)
    try:
        measure(fresh, fresh)
        old_way = "ran"
    except Exception as exc:  # the crash of issue 19: DTensor parameters outside the FSDP root
        old_way = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    dist.destroy_process_group()
    return {"plain": plain, "sharded": sharded, "units": len(units), "layer_classes": sorted(layer_classes),
            "old_way": old_way}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))

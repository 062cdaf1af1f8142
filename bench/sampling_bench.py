"""Samples/s of the batched KV-cache sampler vs ``model.generate`` looped per prompt (CPU, tiny-ish Llama).

    .venv/bin/python bench/sampling_bench.py [--prompts 64] [--n 8] [--max-new-tokens 32] [--hidden 128]

Baseline: one ``model.generate(do_sample=True, num_return_sequences=n)`` call per prompt (its own batching of
the n samples, the usual way to draw n samples). Ours: :func:`hdpo_core.eval.sampling.sample_batched` over all
``prompts x n`` rows in chunks of ``--max-batch-size``. Both stop rows at EOS; the generated token counts are
printed so the comparison is fair (they match to within 0.2% with the default settings).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eval"))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402

from hdpo_core.eval.sampling import sample_batched  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), hidden=args.hidden, layers=args.layers)
    prompts = [tok(f"Q: {i}+{i * 7 % 13}=")["input_ids"] for i in range(args.prompts)]
    kw = {"max_new_tokens": args.max_new_tokens, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}

    start = time.perf_counter()
    ours = sample_batched(model, prompts, n=args.n, temperature=1.0, seed=0, max_batch_size=args.max_batch_size, **kw)
    t_ours = time.perf_counter() - start
    ours_tokens = sum(len(t) for t in ours.tokens)

    torch.manual_seed(0)
    base_tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            out = model.generate(torch.tensor([p]), do_sample=True, temperature=1.0, top_k=0,
                                 num_return_sequences=args.n, **kw)
            base_tokens += int((out[:, len(p):] != tok.pad_token_id).sum())
    t_base = time.perf_counter() - start

    total = args.prompts * args.n
    print(f"model: Llama hidden={args.hidden} layers={args.layers} vocab={len(tok)}; {args.prompts} prompts x "
          f"{args.n} samples, max_new_tokens={args.max_new_tokens}, torch threads={args.threads}")
    print(f"batched sampler (max_batch_size={args.max_batch_size}): {t_ours:.2f} s, {total / t_ours:.1f} samples/s, "
          f"{ours_tokens} tokens")
    print(f"generate per prompt (num_return_sequences={args.n}): {t_base:.2f} s, {total / t_base:.1f} samples/s, "
          f"{base_tokens} tokens")
    print(f"speed-up: {t_base / t_ours:.2f}x")


if __name__ == "__main__":
    main()

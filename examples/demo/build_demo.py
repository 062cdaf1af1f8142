"""Build the offline demo: a tiny Llama that half-solves small arithmetic word problems, plus on-policy
preference pairs sampled from it. Run from the repository root::

    python examples/demo/build_demo.py --out examples/demo          # full build (~minutes, one core)
    python examples/demo/build_demo.py --out /tmp/demo --quick      # seconds; for tests

Steps: (1) draw disjoint problem sets from one seed (``demo_tasks``); (2) train a byte-level BPE
tokenizer on the SFT texts; (3) SFT a tiny ``LlamaForCausalLM`` from scratch on the worked solutions;
(4) measure accuracy at T=1 and T=0.5 on held-out problems; (5) sample several completions per prompt at
T=1, verify them, and pair a correct one (chosen) with a wrong one (rejected); (6) write the model
folder, JSONL data, ``build_report.json`` and ``CHECKSUMS.sha256``.

Determinism: one thread, ``torch.use_deterministic_algorithms(True)``, every random draw seeded from
``--seed``, sorted file listings and no wall-clock input to any artifact (the build time is reported
in ``build_report.json`` only). Same seed + same software stack gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import transformers  # noqa: E402
from demo_model import ModelSize, build_model, encode_examples, sample, train_sft, train_tokenizer  # noqa: E402
from demo_tasks import Problem, is_correct, make_problems  # noqa: E402

ARTIFACT_DIRS = ("model", "data")
REPORT = "build_report.json"
CHECKSUMS = "CHECKSUMS.sha256"


@dataclass(frozen=True)
class BuildSize:
    """How much of everything to build; ``FULL`` ships, ``QUICK`` is for tests."""

    sft_steps: int
    batch_size: int
    lr: float
    vocab_size: int
    tasks_eval: int  # held-out problems with answers, for the evaluation stage
    pref_train_prompts: int
    pref_eval_prompts: int
    samples_per_prompt: int
    max_pairs_per_prompt: int
    acc_samples: int  # samples per tasks_eval problem when measuring accuracy
    model: ModelSize


FULL = BuildSize(sft_steps=850, batch_size=32, lr=3e-3, vocab_size=384, tasks_eval=128,
                 pref_train_prompts=768, pref_eval_prompts=64, samples_per_prompt=8,
                 max_pairs_per_prompt=4, acc_samples=8, model=ModelSize())
QUICK = BuildSize(sft_steps=40, batch_size=16, lr=3e-3, vocab_size=320, tasks_eval=16,
                  pref_train_prompts=24, pref_eval_prompts=8, samples_per_prompt=4,
                  max_pairs_per_prompt=2, acc_samples=2,
                  model=ModelSize(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128))


def make_pairs(problems: list[Problem], samples: list[list[str]], max_pairs: int) -> list[dict[str, str]]:
    """Pair distinct correct samples (chosen) with distinct wrong ones (rejected), up to ``max_pairs``
    per prompt, in sample order. A chosen sample must state its answer as ``#### N``; samples that decode
    to invalid UTF-8 are dropped. Prompts where every sample is right (or wrong) give no pair."""
    rows = []
    for problem, outs in zip(problems, samples, strict=True):
        usable = [o for o in outs if o.strip() and "\ufffd" not in o]  # drop undecodable byte soup
        good = list(dict.fromkeys(o for o in usable if "####" in o and is_correct(o, problem.answer)))
        bad = list(dict.fromkeys(o for o in usable if not is_correct(o, problem.answer)))
        if not good or not bad:
            continue
        for i in range(min(max_pairs, max(len(good), len(bad)))):
            rows.append({"prompt": problem.prompt, "chosen": good[i % len(good)], "rejected": bad[i % len(bad)]})
    return rows


def accuracy(problems: list[Problem], samples: list[list[str]]) -> float:
    """Fraction of all samples whose extracted answer is right."""
    hits = [is_correct(o, p.answer) for p, outs in zip(problems, samples, strict=True) for o in outs]
    return sum(hits) / len(hits)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def shipped_files(out: Path) -> list[Path]:
    """Every artifact the build writes (model, data, report), sorted; the checksum file lists these."""
    files = [f for d in ARTIFACT_DIRS for f in (out / d).rglob("*") if f.is_file()]
    return sorted(files + [out / REPORT], key=lambda f: f.relative_to(out).as_posix())


def write_checksums(out: Path) -> None:
    lines = []
    for f in shipped_files(out):
        lines.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(out).as_posix()}\n")
    (out / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def check_boundaries(tokenizer, rows: list[dict]) -> None:
    """Every prompt must be a token prefix of prompt+chosen and prompt+rejected (raises otherwise)."""
    for key in ("chosen", "rejected") if rows else ():
        encode_examples(tokenizer, [r["prompt"] for r in rows], [r[key] for r in rows])


def build(out: Path, size: BuildSize, seed: int) -> dict:
    """Run every step into ``out`` and return the report (also written to ``out/build_report.json``)."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)

    # 1. Disjoint problem sets; held-out sets are drawn first so SFT never sees their prompts.
    used: set[str] = set()
    tasks_eval = make_problems(seed + 1, size.tasks_eval, exclude=used)
    pref_eval = make_problems(seed + 2, size.pref_eval_prompts, exclude=used)
    pref_train = make_problems(seed + 3, size.pref_train_prompts, exclude=used)
    sft = make_problems(seed + 4, size.sft_steps * size.batch_size, exclude=used)
    print(f"problems: sft {len(sft)}, pref train {len(pref_train)}, pref eval {len(pref_eval)}, "
          f"tasks eval {len(tasks_eval)}", flush=True)

    # 2-3. Tokenizer and SFT.
    tokenizer = train_tokenizer([p.prompt + p.solution for p in sft[:20000]], size.vocab_size)
    torch.manual_seed(seed)
    model = build_model(len(tokenizer), size.model, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id)
    params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer vocab {len(tokenizer)}; model params {params}", flush=True)
    examples = encode_examples(tokenizer, [p.prompt for p in sft], [p.solution for p in sft])
    t_sft = time.perf_counter()
    losses = train_sft(model, examples, steps=size.sft_steps, batch_size=size.batch_size, lr=size.lr,
                       pad_id=tokenizer.pad_token_id)
    sft_seconds = time.perf_counter() - t_sft

    # 4. Accuracy on held-out problems.
    prompts = [p.prompt for p in tasks_eval]
    acc_t1 = accuracy(tasks_eval, sample(model, tokenizer, prompts, num_samples=size.acc_samples,
                                         temperature=1.0, seed=seed + 10))
    acc_t05 = accuracy(tasks_eval, sample(model, tokenizer, prompts, num_samples=size.acc_samples,
                                          temperature=0.5, seed=seed + 20))
    print(f"accuracy on {len(tasks_eval)} held-out problems: T=1 {acc_t1:.3f}, T=0.5 {acc_t05:.3f}", flush=True)

    # 5. On-policy pairs.
    k = size.samples_per_prompt
    train_samples = sample(model, tokenizer, [p.prompt for p in pref_train], num_samples=k, temperature=1.0,
                           seed=seed + 30)
    eval_samples = sample(model, tokenizer, [p.prompt for p in pref_eval], num_samples=k, temperature=1.0,
                          seed=seed + 40)
    train_rows = make_pairs(pref_train, train_samples, size.max_pairs_per_prompt)
    eval_rows = make_pairs(pref_eval, eval_samples, size.max_pairs_per_prompt)
    check_boundaries(tokenizer, train_rows + eval_rows)
    print(f"pairs: train {len(train_rows)}, eval {len(eval_rows)}", flush=True)

    # 6. Write artifacts.
    for d in ARTIFACT_DIRS:
        shutil.rmtree(out / d, ignore_errors=True)
    (out / "data").mkdir(parents=True)
    model.save_pretrained(out / "model")
    tokenizer.padding_side = "left"  # batched generation pads on the left
    tokenizer.save_pretrained(out / "model")
    write_jsonl(out / "data" / "train.jsonl", train_rows)
    write_jsonl(out / "data" / "eval.jsonl", eval_rows)
    write_jsonl(out / "data" / "tasks_eval.jsonl", [{"prompt": p.prompt, "answer": str(p.answer)} for p in tasks_eval])
    report = {
        "seed": seed,
        "size": asdict(size),
        "params": params,
        "vocab_size": len(tokenizer),
        "sft_final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "sft_problems": len(sft),
        "accuracy_t1": round(acc_t1, 4),
        "accuracy_t05": round(acc_t05, 4),
        "accuracy_samples": size.acc_samples * len(tasks_eval),
        "pref_train_accuracy_t1": round(accuracy(pref_train, train_samples), 4),
        "train_pairs": len(train_rows),
        "train_prompts_with_pairs": len({r["prompt"] for r in train_rows}),
        "eval_pairs": len(eval_rows),
        "eval_prompts_with_pairs": len({r["prompt"] for r in eval_rows}),
        "tasks_eval": len(tasks_eval),
        "weights_bytes": (out / "model" / "model.safetensors").stat().st_size,
        "sft_seconds": round(sft_seconds, 1),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_checksums(out)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write model/, data/, build_report.json and CHECKSUMS.sha256 into")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--quick", action="store_true", help="tiny build (seconds) for tests; not shipped")
    parser.add_argument("--sft-steps", type=int, default=None, help="override the number of SFT steps")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.sft_steps is not None:
        size = BuildSize(**{**asdict(size), "model": size.model, "sft_steps": args.sft_steps})
    report = build(args.out, size, args.seed)
    print(json.dumps({k: report[k] for k in ("accuracy_t1", "accuracy_t05", "train_pairs", "eval_pairs",
                                             "params", "build_seconds")}))


if __name__ == "__main__":
    main()

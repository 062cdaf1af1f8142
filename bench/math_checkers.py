"""How often the hand-written ``math`` verifier and math-verify (``math_verify``) disagree.

Two sets: the demo model's own completions (every chosen and rejected completion in
``examples/demo/data/train.jsonl``, judged against the answer of the prompt's chosen completion, which the build
checked correct), and the hard cases in ``tests/eval/data/math_hard_cases.jsonl`` (fractions, units, thousands
separators, LaTeX; each with the right verdict, written by hand). Prints one markdown table (docs/eval.md).

    python bench/math_checkers.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hdpo_core.eval.verifiers import get_verifier

ROOT = Path(__file__).resolve().parents[1]
HASHES = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def demo_items() -> list[tuple[dict, str]]:
    items = []
    for line in (ROOT / "examples/demo/data/train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        gold = HASHES.search(row["chosen"]).group(1)  # type: ignore[union-attr]
        items += [({"answer": gold}, row["chosen"]), ({"answer": gold}, row["rejected"])]
    return items


def main() -> None:
    math, mv = get_verifier("math"), get_verifier("math_verify")
    demo = demo_items()
    d = [(math.check(t, c, {}), mv.check(t, c, {})) for t, c in demo]
    hard = [json.loads(x) for x in (ROOT / "tests/eval/data/math_hard_cases.jsonl").read_text().splitlines()]
    h = [(math.check(r, r["completion"], {}), mv.check(r, r["completion"], {}), r["right"]) for r in hard]
    print("| set | completions | math correct | math_verify correct | disagree | math right | math_verify right |")
    print("|---|---|---|---|---|---|---|")
    print(f"| demo completions (train.jsonl) | {len(d)} | {sum(a for a, _ in d)} | {sum(b for _, b in d)} | "
          f"{sum(a != b for a, b in d)} | n/a | n/a |")
    print(f"| hard cases | {len(h)} | {sum(a for a, _, _ in h)} | {sum(b for _, b, _ in h)} | "
          f"{sum(a != b for a, b, _ in h)} | {sum(a == r for a, _, r in h)} | {sum(b == r for _, b, r in h)} |")
    for (a, b), (t, c) in zip(d, demo, strict=True):
        if a != b:
            print(f"demo disagreement: gold {t['answer']!r}, math {a}, math_verify {b}: {c!r}")


if __name__ == "__main__":
    main()

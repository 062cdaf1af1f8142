"""Verifiers: decide whether a sampled completion solves a task. Pluggable through :data:`VERIFIERS`.

Each verifier names the task fields it needs (checked when the task file loads, with ``file:row``), extracts
a final answer (used for the "unique answers" diversity number) and scores a completion.

* ``math``: final numeric answer, GSM8K's ``#### 42`` if present, else the last number in the text; compared
  numerically (commas and a trailing ``.`` stripped, floats within 1e-6 relative).
* ``math_verify``: the same task rows, judged by Hugging Face's math-verify (LaTeX, expressions; symbolic
  equality), GSM8K's ``#### N`` kept (:mod:`hdpo_core.eval.mathverify`).
* ``exact``: the stripped completion (up to the first blank line) equals the stripped ``answer``.
* ``regex``: ``answer`` is a regular expression that must match (``re.search``) the completion.
* ``code``: HumanEval-style; runs ``prompt + completion + test + check(entry_point)`` in the sandbox
  (:mod:`hdpo_core.eval.sandbox`). Passing means the program exits 0 within the time limit.
* ``choice``: multiple choice (MMLU-Pro): the chosen letter, extracted as MMLU-Pro does
  (:mod:`hdpo_core.eval.choice`); extraction failures are tallied apart from wrong answers.
* ``ifeval``: IFEval's verifiable instructions, checked by lm-evaluation-harness's implementation
  (:mod:`hdpo_core.eval.ifeval`); strict and loose, prompt- and instruction-level.

Beyond pass/fail a verifier may *tally* per-sample counts (``{metric: (hits, out_of)}``), summed over the samples
of one temperature into ``hits / out_of`` (e.g. IFEval's instruction-level accuracy, choice's extraction
failures), state the *chance* accuracy of a task, and check a row's fields further (*row_problem*).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import choice
from .sandbox import run_python

#: per-sample counts a verifier reports beside pass/fail: ``{metric: (hits, out_of)}``
Tally = dict[str, tuple[float, float]]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_HASHES = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def extract_math_answer(text: str) -> float | None:
    """``#### 42`` (GSM8K) if present, else the last number in ``text``; ``None`` when there is none."""
    m = _HASHES.search(text)
    if m:
        return parse_number(m.group(1))
    numbers = _NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def numbers_equal(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return False
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _math_check(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> bool:
    expected = task["answer"]
    target = float(expected) if isinstance(expected, int | float) else extract_math_answer(str(expected))
    return numbers_equal(extract_math_answer(completion), target)


def _first_block(text: str) -> str:
    return text.strip().split("\n\n")[0].strip()


def _exact_check(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> bool:
    return _first_block(completion) == str(task["answer"]).strip()


def _regex_check(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> bool:
    return re.search(str(task["answer"]), completion) is not None


def code_program(task: dict[str, Any], completion: str) -> str:
    """The HumanEval program: prompt + completion, then the task's tests and ``check(entry_point)``."""
    return f"{task['prompt']}{completion}\n\n{task['test']}\n\ncheck({task['entry_point']})\n"


def _code_check(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> bool:
    result = run_python(code_program(task, completion), timeout_s=opts.get("timeout_s", 5.0),
                        memory_mb=opts.get("memory_mb", 512), allow_unsandboxed=opts.get("allow_unsandboxed", False))
    return result.passed


def _code_answer(completion: str) -> str:
    return completion.strip()


def _math_verify_check(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> bool:
    from .mathverify import check_math_verify

    return check_math_verify(task, completion)


def _math_verify_answer(completion: str) -> object:
    from .mathverify import answer_key

    return answer_key(completion)


def _math_verify_problem(task: dict[str, Any]) -> str | None:
    from .mathverify import gold_problem

    return gold_problem(task)


def _choice_judge(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> Judgement:
    correct, failed = choice.judge_choice(task, completion)
    return Judgement(correct, {"extraction_failures": (float(failed), 1.0)})


def _choice_answer(completion: str) -> str | None:
    return choice.extract_choice(completion, choice.MAX_OPTIONS)


def _ifeval_judge(task: dict[str, Any], completion: str, opts: dict[str, Any]) -> Judgement:
    from .ifeval import judge_ifeval

    tally = judge_ifeval(task, completion)
    return Judgement(tally["prompt_level_strict_acc"][0] == 1.0, tally)


def _ifeval_problem(task: dict[str, Any]) -> str | None:
    from .ifeval import row_problem

    return row_problem(task)


@dataclass(frozen=True)
class Judgement:
    """One sample's verdict and the counts behind it (empty for plain pass/fail verifiers)."""

    correct: bool
    tally: Tally = field(default_factory=dict)


@dataclass(frozen=True)
class Verifier:
    """A named checker: ``check(task, completion, opts) -> bool``; ``answer(completion)`` for diversity.

    ``judge`` (optional) returns a :class:`Judgement` with tallies and then defines ``check``; ``chance(task)``
    is a random guess's accuracy (shown beside the accuracy); ``row_problem(task)`` names what is wrong with a
    row beyond a missing field, with the fix (checked when the task file loads and by ``hdpo-tune validate``).
    """

    name: str
    fields: tuple[str, ...]
    check: Callable[[dict[str, Any], str, dict[str, Any]], bool]
    answer: Callable[[str], object]
    slow: bool = False  # worth running in parallel (subprocesses)
    judge: Callable[[dict[str, Any], str, dict[str, Any]], Judgement] | None = None
    chance: Callable[[dict[str, Any]], float] | None = None
    row_problem: Callable[[dict[str, Any]], str | None] | None = None

    def verdict(self, task: dict[str, Any], completion: str, opts: dict[str, Any]) -> Judgement:
        if self.judge is not None:
            return self.judge(task, completion, opts)
        return Judgement(self.check(task, completion, opts))


def _judged(name: str, fields: tuple[str, ...], judge: Callable[[dict[str, Any], str, dict[str, Any]], Judgement],
            answer: Callable[[str], object], **extra: Any) -> Verifier:
    return Verifier(name, fields, lambda t, c, o: judge(t, c, o).correct, answer, judge=judge, **extra)


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier("math", ("prompt", "answer"), _math_check, extract_math_answer),
    "exact": Verifier("exact", ("prompt", "answer"), _exact_check, _first_block),
    "regex": Verifier("regex", ("prompt", "answer"), _regex_check, _first_block),
    "code": Verifier("code", ("prompt", "test", "entry_point"), _code_check, _code_answer, slow=True),
    "math_verify": Verifier("math_verify", ("prompt", "answer"), _math_verify_check, _math_verify_answer,
                            row_problem=_math_verify_problem),
    "choice": _judged("choice", ("prompt", "options", "answer"), _choice_judge, _choice_answer,
                      chance=choice.chance, row_problem=choice.row_problem),
    "ifeval": _judged("ifeval", ("prompt", "instruction_id_list", "kwargs"), _ifeval_judge, _first_block,
                      row_problem=_ifeval_problem),
}


def register_verifier(verifier: Verifier) -> None:
    """Add (or replace) a verifier; ``--verifier NAME`` then selects it."""
    VERIFIERS[verifier.name] = verifier


def get_verifier(name: str) -> Verifier:
    from hdpo_core.errors import InputError

    if name not in VERIFIERS:
        raise InputError(f"eval.verifier: unknown verifier '{name}'; choose one of {sorted(VERIFIERS)}")
    return VERIFIERS[name]


def verify_many(verifier: Verifier, items: Sequence[tuple[dict[str, Any], str]], *, workers: int = 2,
                **opts: Any) -> list[bool]:
    """Score ``(task, completion)`` pairs, in order; slow verifiers (code) run ``workers`` at a time."""
    return [j.correct for j in judge_many(verifier, items, workers=workers, **opts)]


def judge_many(verifier: Verifier, items: Sequence[tuple[dict[str, Any], str]], *, workers: int = 2,
               **opts: Any) -> list[Judgement]:
    """:func:`verify_many` with each sample's tallies."""
    if verifier.slow and workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda it: verifier.verdict(it[0], it[1], opts), items))
    return [verifier.verdict(task, completion, opts) for task, completion in items]


def sum_tallies(tallies: Sequence[Tally]) -> dict[str, float]:
    """``{metric: sum(hits) / sum(out_of)}`` over samples (IFEval's micro-average for instruction level)."""
    hits: dict[str, float] = {}
    total: dict[str, float] = {}
    for tally in tallies:
        for key, (h, n) in tally.items():
            hits[key] = hits.get(key, 0.0) + h
            total[key] = total.get(key, 0.0) + n
    return {k: hits[k] / total[k] if total[k] else float("nan") for k in hits}

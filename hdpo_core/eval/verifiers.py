"""Verifiers: decide whether a sampled completion solves a task. Pluggable through :data:`VERIFIERS`.

Each verifier names the task fields it needs (checked when the task file loads, with ``file:row``), extracts
a final answer (used for the "unique answers" diversity number) and scores a completion.

* ``math``: final numeric answer, GSM8K's ``#### 42`` if present, else the last number in the text; compared
  numerically (commas and a trailing ``.`` stripped, floats within 1e-6 relative).
* ``exact``: the stripped completion (up to the first blank line) equals the stripped ``answer``.
* ``regex``: ``answer`` is a regular expression that must match (``re.search``) the completion.
* ``code``: HumanEval-style; runs ``prompt + completion + test + check(entry_point)`` in the sandbox
  (:mod:`hdpo_core.eval.sandbox`). Passing means the program exits 0 within the time limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .sandbox import run_python

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


@dataclass(frozen=True)
class Verifier:
    """A named checker: ``check(task, completion, opts) -> bool``; ``answer(completion)`` for diversity."""

    name: str
    fields: tuple[str, ...]
    check: Callable[[dict[str, Any], str, dict[str, Any]], bool]
    answer: Callable[[str], object]
    slow: bool = False  # worth running in parallel (subprocesses)


VERIFIERS: dict[str, Verifier] = {
    "math": Verifier("math", ("prompt", "answer"), _math_check, extract_math_answer),
    "exact": Verifier("exact", ("prompt", "answer"), _exact_check, _first_block),
    "regex": Verifier("regex", ("prompt", "answer"), _regex_check, _first_block),
    "code": Verifier("code", ("prompt", "test", "entry_point"), _code_check, _code_answer, slow=True),
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
    if verifier.slow and workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda it: verifier.check(it[0], it[1], opts), items))
    return [verifier.check(task, completion, opts) for task, completion in items]
